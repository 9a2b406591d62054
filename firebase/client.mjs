// A Firestore client of this backend as a real app writes it, with the
// Firebase JS SDK, for the distributed end-to-end test (tests/it/distributed.rs).
//
//   node firebase/client.mjs listen <chat-id>   a member: signs in with the
//       custom token from auth-service, waits for the chat to appear in its
//       chat list (members array-contains uid), listens to its batches and
//       prints each message the first time it sees it:
//         {"event":"message","id":...,"seq":...,"text":...}
//       and {"event":"state", "ids":[...]} with every message id held by the
//       batch documents, in seq order, after each snapshot.
//   node firebase/client.mjs probe <chat-id>    tries a listener on the
//       chat's batches, reads of the chat, its own chat list, and writes;
//       prints {"event":"probe","what":...,"outcome":"allowed"|<error code>}
//       for each (and "listed" for the chat list).
//
// Environment: FIREBASE_TOKEN (the custom token), FIREBASE_PROJECT_ID,
// FIREBASE_AUTH_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST (host:port).
// Output is JSON lines on stdout; it runs until killed (listen) or done
// (probe).

import { initializeApp } from 'firebase/app';
import { connectAuthEmulator, getAuth, signInWithCustomToken } from 'firebase/auth';
import {
  connectFirestoreEmulator,
  doc,
  getDoc,
  getDocs,
  getFirestore,
  onSnapshot,
  setDoc,
  updateDoc,
} from 'firebase/firestore';
import { chatBatchesQuery, chatListQuery } from './queries.mjs';

const [mode, chatId] = process.argv.slice(2);
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const app = initializeApp({ projectId: env('FIREBASE_PROJECT_ID'), apiKey: 'demo-api-key' });
const auth = getAuth(app);
connectAuthEmulator(auth, `http://${env('FIREBASE_AUTH_EMULATOR_HOST')}`, { disableWarnings: true });
const db = getFirestore(app);
const [fsHost, fsPort] = env('FIRESTORE_EMULATOR_HOST').split(':');
connectFirestoreEmulator(db, fsHost, Number(fsPort));

const credential = await signInWithCustomToken(auth, env('FIREBASE_TOKEN'));
const uid = credential.user.uid;
emit({ event: 'signed_in', uid });

if (mode === 'listen') {
  await listen();
} else if (mode === 'probe') {
  await probe();
  process.exit(0);
} else {
  throw new Error(`unknown mode ${mode}`);
}

async function listen() {
  // The chat document appears with the chat's first batch; list first.
  await new Promise((resolve, reject) => {
    const stop = onSnapshot(chatListQuery(db, uid), (snap) => {
      if (snap.docs.some((d) => d.id === chatId)) {
        stop();
        resolve();
      }
    }, reject);
  });
  emit({ event: 'chat_listed', chat_id: chatId });
  const seen = new Set();
  onSnapshot(chatBatchesQuery(db, chatId), (snap) => {
    const ids = [];
    for (const d of snap.docs) {
      const batch = d.data();
      for (const m of batch.messages) {
        ids.push(m.id);
        if (!seen.has(m.id)) {
          seen.add(m.id);
          emit({ event: 'message', id: m.id, seq: batch.seq, text: m.text });
        }
      }
    }
    emit({ event: 'state', ids });
  }, (e) => {
    emit({ event: 'error', code: e.code, message: e.message });
    process.exit(2);
  });
}

async function outcome(what, op) {
  try {
    const extra = await op();
    emit({ event: 'probe', what, outcome: 'allowed', ...(extra?.listed === undefined ? {} : extra) });
  } catch (e) {
    emit({ event: 'probe', what, outcome: e.code ?? String(e) });
  }
}

async function probe() {
  await outcome('listen batches', () => new Promise((resolve, reject) => {
    const stop = onSnapshot(chatBatchesQuery(db, chatId), () => { stop(); resolve(); }, reject);
  }));
  await outcome('get chat', () => getDoc(doc(db, 'chats', chatId)));
  await outcome('query batches', () => getDocs(chatBatchesQuery(db, chatId)));
  await outcome('list own chats', async () => {
    const snap = await getDocs(chatListQuery(db, uid));
    return { listed: snap.docs.some((d) => d.id === chatId) };
  });
  await outcome('write batch', () => setDoc(doc(db, 'chats', chatId, 'batches', 'forged'), { seq: 99, messages: [] }));
  await outcome('write chat', () => updateDoc(doc(db, 'chats', chatId), { members: [uid] }));
  await outcome('create chat', () => setDoc(doc(db, 'chats', `forged-${uid}`), { members: [uid] }));
}
