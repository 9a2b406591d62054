// Tests of firestore.rules and firestore.indexes.json against the real
// Firestore emulator (FIRESTORE_EMULATOR_HOST), through the Firebase JS SDK
// as clients use it. Run: node --test firebase/rules.test.mjs
//
// Documents are set up with rules disabled (as the aggregator writes them,
// with admin credentials); every client read and write then goes through
// the rules.

import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertFails,
  assertSucceeds,
  initializeTestEnvironment,
} from '@firebase/rules-unit-testing';
import {
  collection,
  deleteDoc,
  doc,
  getDoc,
  getDocs,
  onSnapshot,
  orderBy,
  query,
  setDoc,
  updateDoc,
  where,
} from 'firebase/firestore';
import { chatBatchesQuery, chatListQuery, CLIENT_QUERIES } from './queries.mjs';

const root = new URL('..', import.meta.url);
const emulator = process.env.FIRESTORE_EMULATOR_HOST;
if (!emulator) {
  throw new Error('FIRESTORE_EMULATOR_HOST is not set: start the Firestore emulator first');
}
const [host, port] = emulator.split(':');

let env;
const CHAT = 'chat-1';

before(async () => {
  env = await initializeTestEnvironment({
    projectId: `demo-rules-${process.pid}-${Date.now()}`,
    firestore: {
      rules: readFileSync(new URL('firestore.rules', root), 'utf8'),
      host,
      port: Number(port),
    },
  });
  await env.withSecurityRulesDisabled(async (ctx) => {
    const db = ctx.firestore();
    await setDoc(doc(db, `chats/${CHAT}`), {
      chat_id: CHAT,
      members: ['alice', 'bob'],
      last_batch_id: 'b1',
      last_batch_seq: 1,
      last_sender_id: 'alice',
      last_activity: new Date(),
    });
    await setDoc(doc(db, `chats/${CHAT}/batches/b1`), {
      id: 'b1',
      chat_id: CHAT,
      members: ['alice', 'bob'],
      sender_id: 'alice',
      seq: 1,
      messages: [{ id: 'm1', text: 'hi', sent_at: new Date() }],
      count: 1,
      closed: false,
    });
    await setDoc(doc(db, 'chats/other'), {
      chat_id: 'other',
      members: ['carol', 'dave'],
      last_activity: new Date(),
    });
  });
});

after(async () => {
  await env?.cleanup();
});

const as = (uid) => env.authenticatedContext(uid).firestore();

describe('members read', () => {
  test('their chat document', async () => {
    await assertSucceeds(getDoc(doc(as('alice'), `chats/${CHAT}`)));
  });

  test('their chat list, with the members filter the rules require', async () => {
    const snap = await assertSucceeds(getDocs(chatListQuery(as('bob'), 'bob')));
    assert.deepEqual(snap.docs.map((d) => d.id), [CHAT]);
  });

  test('the batches of their chat, by query and by id', async () => {
    const snap = await assertSucceeds(getDocs(chatBatchesQuery(as('bob'), CHAT)));
    assert.equal(snap.size, 1);
    await assertSucceeds(getDoc(doc(as('alice'), `chats/${CHAT}/batches/b1`)));
  });

  test('with a realtime listener', async () => {
    const seen = await new Promise((resolve, reject) => {
      const stop = onSnapshot(chatBatchesQuery(as('alice'), CHAT), (snap) => {
        stop();
        resolve(snap.size);
      }, reject);
    });
    assert.equal(seen, 1);
  });
});

describe('non-members are refused', () => {
  test('a chat that is not theirs', async () => {
    await assertFails(getDoc(doc(as('mallory'), `chats/${CHAT}`)));
    await assertFails(getDocs(chatBatchesQuery(as('mallory'), CHAT)));
    await assertFails(getDoc(doc(as('mallory'), `chats/${CHAT}/batches/b1`)));
  });

  test('a listener on a chat that is not theirs', async () => {
    const outcome = await new Promise((resolve) => {
      const stop = onSnapshot(
        chatBatchesQuery(as('mallory'), CHAT),
        () => { stop(); resolve('data'); },
        (e) => resolve(e.code),
      );
    });
    assert.equal(outcome, 'permission-denied');
  });

  test('a chat list without the members filter (rules are not filters)', async () => {
    await assertFails(getDocs(collection(as('alice'), 'chats')));
    await assertFails(getDocs(query(collection(as('alice'), 'chats'), orderBy('last_activity'))));
  });

  test('a chat list filtered on someone else', async () => {
    await assertFails(getDocs(query(collection(as('mallory'), 'chats'), where('members', 'array-contains', 'alice'))));
  });

  test('anyone not signed in', async () => {
    const anon = env.unauthenticatedContext().firestore();
    await assertFails(getDoc(doc(anon, `chats/${CHAT}`)));
    await assertFails(getDocs(chatBatchesQuery(anon, CHAT)));
  });

  test('batches of a chat whose document does not exist', async () => {
    await assertFails(getDocs(chatBatchesQuery(as('alice'), 'no-such-chat')));
  });

  test('documents outside chats', async () => {
    await assertFails(getDoc(doc(as('alice'), 'users/alice')));
  });
});

describe('a removed member', () => {
  test('loses the chat and its batches at once', async () => {
    await env.withSecurityRulesDisabled(async (ctx) => {
      await setDoc(doc(ctx.firestore(), 'chats/group-1'), {
        chat_id: 'group-1',
        members: ['alice', 'bob', 'erin'],
        last_activity: new Date(),
      });
      await setDoc(doc(ctx.firestore(), 'chats/group-1/batches/b1'), {
        id: 'b1', chat_id: 'group-1', sender_id: 'alice', seq: 1, messages: [],
      });
    });
    await assertSucceeds(getDoc(doc(as('erin'), 'chats/group-1')));
    await assertSucceeds(getDocs(chatBatchesQuery(as('erin'), 'group-1')));

    await env.withSecurityRulesDisabled(async (ctx) => {
      await updateDoc(doc(ctx.firestore(), 'chats/group-1'), { members: ['alice', 'bob'] });
    });
    await assertFails(getDoc(doc(as('erin'), 'chats/group-1')));
    await assertFails(getDocs(chatBatchesQuery(as('erin'), 'group-1')));
    await assertFails(getDoc(doc(as('erin'), 'chats/group-1/batches/b1')));
    // The others still read it.
    await assertSucceeds(getDocs(chatBatchesQuery(as('bob'), 'group-1')));
  });
});

describe('no client writes anything', () => {
  test('not even members, not anywhere', async () => {
    const alice = as('alice');
    await assertFails(setDoc(doc(alice, 'chats/new'), { members: ['alice'] }));
    await assertFails(updateDoc(doc(alice, `chats/${CHAT}`), { members: ['alice', 'bob', 'mallory'] }));
    await assertFails(deleteDoc(doc(alice, `chats/${CHAT}`)));
    await assertFails(setDoc(doc(alice, `chats/${CHAT}/batches/b2`), { seq: 2 }));
    await assertFails(updateDoc(doc(alice, `chats/${CHAT}/batches/b1`), { count: 2 }));
    await assertFails(deleteDoc(doc(alice, `chats/${CHAT}/batches/b1`)));
    await assertFails(setDoc(doc(alice, 'users/alice'), { admin: true }));
    const anon = env.unauthenticatedContext().firestore();
    await assertFails(setDoc(doc(anon, 'chats/x'), { members: [] }));
  });
});

describe('firestore.indexes.json', () => {
  const declared = JSON.parse(readFileSync(new URL('firestore.indexes.json', root), 'utf8'));
  // The emulator does not enforce composite indexes, so this checks that
  // every query clients are documented to run has its index declared.
  for (const q of CLIENT_QUERIES.filter((q) => q.composite)) {
    test(`declares the index of the ${q.name} query`, () => {
      const found = declared.indexes.some((index) =>
        index.collectionGroup === q.collection &&
        index.queryScope === 'COLLECTION' &&
        JSON.stringify(index.fields) === JSON.stringify(q.composite));
      assert.ok(found, `no index for ${JSON.stringify(q.composite)} on ${q.collection}`);
    });
  }

  test('expire_at is the batches TTL field', () => {
    assert.ok(declared.fieldOverrides.some((f) =>
      f.collectionGroup === 'batches' && f.fieldPath === 'expire_at' && f.ttl === true));
  });
});
