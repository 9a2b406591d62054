// The Firestore queries a client of this backend runs, in one place: the
// end-to-end listener uses them, and the rules test checks that each is
// allowed for members and that firestore.indexes.json declares the index
// each composite one needs.

import { collection, orderBy, query, where } from 'firebase/firestore';

/** The signed-in user's chats, most recently active first. */
export function chatListQuery(db, uid) {
  return query(
    collection(db, 'chats'),
    where('members', 'array-contains', uid),
    orderBy('last_activity', 'desc'),
  );
}

/** A chat's batches in order (`seq` 1, 2, 3…; a gap means: read history). */
export function chatBatchesQuery(db, chatId) {
  return query(collection(db, 'chats', chatId, 'batches'), orderBy('seq'));
}

export const CLIENT_QUERIES = [
  {
    name: 'chat list',
    collection: 'chats',
    composite: [
      { fieldPath: 'members', arrayConfig: 'CONTAINS' },
      { fieldPath: 'last_activity', order: 'DESCENDING' },
    ],
  },
  // Single-field order: covered by Firestore's automatic indexes.
  { name: 'chat batches', collection: 'batches', composite: null },
];
