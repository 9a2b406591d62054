// Browser tests of the web client: the real all-in-one binary and headless
// Chromium, each case at a phone width (390 px) and a desktop width
// (1280 px). Screenshots are kept in $ARTIFACTS_DIR (./artifacts).
//
// CHAT_BACKEND_BIN: the chat-backend binary. CHROMIUM: the browser
// (/usr/bin/chromium by default, Debian's package).

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const bin = process.env.CHAT_BACKEND_BIN;
if (!bin) throw new Error("set CHAT_BACKEND_BIN to the chat-backend binary");
const artifacts = resolve(process.env.ARTIFACTS_DIR || "artifacts");
mkdirSync(artifacts, { recursive: true });

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
    server.on("error", fail);
  });
}

async function waitForHttp(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const port = await freePort();
const data = mkdtempSync(join(tmpdir(), "chat-browser-"));
// Every case registers its users from this one address.
function startServer() {
  return spawn(bin, ["--listen", `127.0.0.1:${port}`, "--data-dir", data, "--registrations-per-address-per-hour", "1000"], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: "warn", PRESENCE_GRACE_MS: "1000" },
  });
}
let server = startServer();

// The server dies (SIGKILL) and comes back on the same port and data.
async function killAndRestart() {
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.kill("SIGKILL");
  await exited;
  server = startServer();
  await waitForHttp(`${base}/healthz`, 30_000);
}
const base = `http://127.0.0.1:${port}`;
// The same server under a name that is not a secure context (plain HTTP,
// not localhost): what a phone on the LAN sees.
const insecureBase = `http://chat.test:${port}`;
const WIDTHS = { phone: { width: 390, height: 800 }, desktop: { width: 1280, height: 800 } };
let browser;
let unique = 0;

// A user made over the API; returns { name, id, token }.
async function apiUser(prefix) {
  const name = `${prefix}${++unique}`;
  const json = { "content-type": "application/json" };
  const credentials = JSON.stringify({ username: name, password: "password123" });
  check((await fetch(`${base}/users`, { method: "POST", headers: json, body: credentials })).status === 201, "register");
  const login = await (await fetch(`${base}/login`, { method: "POST", headers: json, body: credentials })).json();
  return { name, id: login.user.id, token: login.access_token };
}

async function apiCall(user, method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

async function page(size, origin = base) {
  const context = await browser.newContext({ viewport: WIDTHS[size] });
  const p = await context.newPage();
  await p.goto(origin);
  return p;
}

async function signIn(p, user) {
  await p.fill("#username", user.name);
  await p.fill("#password", "password123");
  await p.click("#login");
  await p.waitForSelector("#app:not([hidden])");
}

async function signUp(p, name) {
  await p.fill("#username", name);
  await p.fill("#password", "password123");
  await p.click("#register");
  await p.waitForSelector("#app:not([hidden])");
}

async function openChatWith(p, name) {
  await p.fill("#search", name);
  await p.click(`#results .item[data-username="${name}"]`);
  await p.waitForSelector("#composer:not([hidden])");
}

async function openListedChat(p, name) {
  await p.click(`#chats .item >> text="${name}"`);
  await p.waitForSelector("#composer:not([hidden])");
}

// A page signed in as a new user, in a chat with another new user.
async function inChat(size, mine, theirs, origin = base) {
  const [me, other] = [await apiUser(mine), await apiUser(theirs)];
  const p = await page(size, origin);
  await signIn(p, me);
  await openChatWith(p, other.name);
  return { p, me, other };
}

// How many times the other user's history holds `text`.
async function storedCount(other, text) {
  const chat = (await apiCall(other, "GET", "/chats")).body.chats[0].id;
  const history = (await apiCall(other, "GET", `/chat/${chat}?quantity=50`)).body.messages;
  return history.filter((m) => m.text === text && m.client_message_id).length;
}

async function send(p, text) {
  await p.fill("#text", text);
  await p.click("#send");
}

// The texts of the stored messages on the page, in page order.
function texts(p) {
  return p.$$eval(".msg", (els) => els.map((e) => e.firstChild.textContent));
}

// Records the stream frames the page handles, in order, in `window.frames_`.
async function recordFrames(p) {
  await p.evaluate(() => {
    window.frames_ = [];
    const handle = window.onFrame;
    window.onFrame = (f) => { window.frames_.push(f); handle(f); };
  });
}

// The texts of the `message` frames recorded since `from`.
async function frameTexts(p, from = 0) {
  return p.evaluate((from) => window.frames_.slice(from).filter((f) => f.type === "message").map((f) => f.text), from);
}

async function shot(p, name) {
  const path = join(artifacts, `browser-${name}.png`);
  await p.screenshot({ path });
  return path;
}

// The conversation takes most of the width, and every visible message and
// the composer lie within the viewport.
async function fitsTheScreen(p, size) {
  const width = WIDTHS[size].width;
  const conversation = await p.$eval("#messages", (e) => e.getBoundingClientRect().width);
  check(conversation >= (size === "phone" ? 0.9 : 0.6) * width, `the conversation is ${conversation} px of ${width}`);
  const boxes = await p.$$eval(".msg, #composer, #text, #send", (els) =>
    els.map((e) => e.getBoundingClientRect()).map((r) => ({ left: r.left, right: r.right, w: r.width })));
  for (const b of boxes) check(b.w > 0 && b.left >= 0 && b.right <= width + 1, `off screen at ${width} px: ${JSON.stringify(b)}`);
}

const cases = {
  // Two people: one sends, the other sees it arrive without reloading.
  async "two users chat live"(size) {
    const alice = await page(size);
    const bob = await page(size);
    const [a, b] = [`alice${++unique}`, `bob${++unique}`];
    await signUp(alice, a);
    await signUp(bob, b);
    await openChatWith(alice, b);
    await openChatWith(bob, a);
    const started = Date.now();
    await fitsTheScreen(alice, size);
    await send(alice, "hello from alice");
    await bob.waitForSelector('.msg:not(.mine) >> text="hello from alice"', { timeout: 5_000 });
    console.log(`  bob saw alice's message ${Date.now() - started} ms after she sent it`);
    await send(bob, "hi alice, got it");
    await alice.waitForSelector('.msg:not(.mine) >> text="hi alice, got it"', { timeout: 5_000 });
    await send(alice, "great");
    await bob.waitForSelector('.msg:not(.mine) >> text="great"', { timeout: 5_000 });
    for (const p of [alice, bob]) {
      const shown = await texts(p);
      check(JSON.stringify(shown) === JSON.stringify(["hello from alice", "hi alice, got it", "great"]), `messages: ${JSON.stringify(shown)}`);
      await fitsTheScreen(p, size);
    }
    // A day label heads the conversation, once.
    check((await bob.$$eval(".day", (els) => els.map((e) => e.textContent))).join() === "Today", "one day label: Today");
    await bob.reload();
    await openListedChat(bob, a);
    await bob.waitForSelector('.msg >> text="great"');
    return shot(bob, `two-users-${size}`);
  },

  // Over plain HTTP on a LAN name there is no crypto.randomUUID; sending
  // still works, with a client id made from crypto.getRandomValues.
  async "sends from a non-secure origin"(size) {
    const { p, other } = await inChat(size, "lan", "peer", insecureBase);
    const secure = await p.evaluate(() => [window.isSecureContext, typeof crypto.randomUUID]);
    check(secure[0] === false && secure[1] === "undefined", `expected a non-secure context, got ${secure}`);
    await send(p, "sent over plain http");
    await p.waitForSelector('.msg.mine:not(.sending):not(.failed) >> text="sent over plain http"', { timeout: 5_000 });
    check((await storedCount(other, "sent over plain http")) === 1, "stored once, with a client id");
    return shot(p, `non-secure-${size}`);
  },

  // One ordered timeline however history pages and stream snapshots arrive.
  async "shows a long chat in order"(size) {
    const [a, b] = [await apiUser("long"), await apiUser("reader")];
    const chat = (await apiCall(a, "POST", "/chats", { user_id: b.id })).body.id;
    const sent = [];
    for (let i = 1; i <= 50; i++) {
      const from = i % 7 < 4 ? a : b; // runs of senders: several batches
      sent.push(`m${i}`);
      check((await apiCall(from, "POST", `/chat/${chat}/messages`, { text: `m${i}`, client_message_id: `c${i}` })).status === 201, "send");
    }
    const p = await page(size);
    await signIn(p, b);
    await openListedChat(p, a.name);
    await p.waitForFunction(() => document.querySelectorAll(".msg").length >= 30);
    // Older pages: scroll to the top until everything is there.
    for (let i = 0; i < 5 && (await p.$$(".msg")).length < 50; i++) {
      await p.click("#older", { timeout: 1_000 }).catch(() => {});
      await p.waitForTimeout(300);
    }
    const shown = await texts(p);
    check(JSON.stringify(shown) === JSON.stringify(sent), `order: ${JSON.stringify(shown)}`);
    // New messages go at the end.
    await apiCall(a, "POST", `/chat/${chat}/messages`, { text: "m51" });
    await p.waitForSelector('.msg >> text="m51"', { timeout: 5_000 });
    const after = await texts(p);
    check(after.at(-1) === "m51" && after.length === 51, `after: ${JSON.stringify(after.slice(-3))}`);
    return shot(p, `long-chat-${size}`);
  },

  // A chat someone else starts shows up without a reload.
  async "a new chat from someone else appears"(size) {
    const [me, caller] = [await apiUser("callee"), await apiUser("caller")];
    const p = await page(size);
    await signIn(p, me);
    check((await apiCall(caller, "POST", "/chats", { user_id: me.id })).status === 201, "chat");
    await p.waitForSelector(`#chats .item >> text="${caller.name}"`, { timeout: 8_000 });
    return shot(p, `new-chat-${size}`);
  },

  // A send that cannot get through shows as failed; the retry by hand
  // uses the same client_message_id, so the message is stored once.
  async "a failed send is shown and retried once"(size) {
    const { p, other } = await inChat(size, "flaky", "steady");
    // The network is down for this page's sends.
    await p.route("**/chat/*/messages", (route) => route.abort("connectionreset"));
    await send(p, "lost answer");
    // Passing failures are retried by the page first; then it says so.
    await p.waitForSelector('.msg.failed >> text="lost answer"', { timeout: 15_000 });
    check((await storedCount(other, "lost answer")) === 0, "not stored yet");
    check(await p.isVisible('.msg.failed button >> text="Retry"'), "a retry button");
    await shot(p, `failed-send-${size}`);
    await p.unroute("**/chat/*/messages");
    await p.click('.msg.failed button >> text="Retry"');
    await p.waitForFunction(() => !document.querySelector(".msg.sending, .msg.failed"), null, { timeout: 10_000 });
    await p.waitForSelector('.msg.mine >> text="lost answer"', { timeout: 5_000 });
    check((await storedCount(other, "lost answer")) === 1, "stored once");
    const shown = (await texts(p)).filter((t) => t === "lost answer");
    check(shown.length === 1, "shown once");
    return shot(p, `retried-send-${size}`);
  },

  // A lost answer: the first attempt is stored but its answer never comes.
  // The page retries by itself (the retry gets the stored message) and the
  // stream may bring the stored copy first; either way it shows once.
  async "a lost answer is retried by itself"(size) {
    const { p, other } = await inChat(size, "blip", "calm");
    let lost = 0;
    await p.route("**/chat/*/messages", async (route) => {
      await route.fetch();
      if (lost++ === 0) await route.abort("connectionreset");
      else await route.continue();
    });
    await send(p, "blip");
    await p.waitForSelector('.msg.mine:not(.failed):not(.sending) >> text="blip"', { timeout: 10_000 });
    // The stream may show the stored copy before the retry's answer comes.
    await p.waitForFunction(() => !document.querySelector(".msg.sending, .msg.failed"), null, { timeout: 10_000 });
    check((await texts(p)).filter((t) => t === "blip").length === 1, "shown once");
    check((await p.$$(".msg.failed, .msg.sending")).length === 0, "nothing pending");
    check((await storedCount(other, "blip")) === 1, "stored once");
    return shot(p, `auto-retry-${size}`);
  },

  // Registration errors name the field they are about.
  // A group: made in the page, its events shown as lines, an unread badge
  // for the others, replies with their quote, read receipts, and a member
  // removed in the panel.
  async "a group with replies, receipts and members"(size) {
    const [a, b, c] = [await apiUser("gina"), await apiUser("hugo"), await apiUser("ines")];
    const title = `Trip ${++unique}`;
    const alice = await page(size);
    await signIn(alice, a);
    await alice.click("#new-group summary");
    await alice.fill("#group-title", title);
    await alice.fill("#group-members", `${b.name}, ${c.name}`);
    await alice.click("#create-group");
    await alice.waitForSelector("#composer:not([hidden])");
    check((await alice.textContent("#title-text")) === title, "the group is open");
    await alice.waitForSelector(`.event >> text="You created the group “${title}”"`);
    await send(alice, "plans?");
    await alice.waitForSelector('.msg.mine.stored >> text="plans?"');

    const bob = await page(size);
    await signIn(bob, b);
    const badge = await bob.waitForSelector(`#chats .item:has-text("${title}") .badge`);
    check((await badge.textContent()) === "1", `unread badge: ${await badge.textContent()}`);
    await openListedChat(bob, title);
    await bob.waitForSelector(`.event >> text="${a.name} created the group “${title}”"`);
    // Bob has read it: Alice's message shows it (receipts come with the
    // member list, refreshed every few seconds).
    await alice.waitForSelector('.msg.mine .receipt >> text="Seen by 1"', { timeout: 15_000 });

    await bob.click('.msg.stored >> text="plans?"');
    await bob.waitForSelector("#replying:not([hidden])");
    await send(bob, "beach");
    const quoted = await alice.waitForSelector('.msg:not(.mine):has-text("beach") .quote');
    check((await quoted.textContent()) === "plans?", `the reply quotes ${await quoted.textContent()}`);
    const stored = (await apiCall(b, "GET", `/chat/${(await apiCall(b, "GET", "/chats")).body.chats[0].id}?quantity=5`)).body.messages;
    check(stored[0].text === "beach" && stored[0].reply_to === stored[1].id, "the reply is stored with reply_to");

    await alice.click("#members-toggle");
    await alice.click(`#member-list .member[data-username="${c.name}"] button`);
    await alice.waitForSelector(`.event >> text="You removed ${c.name}"`);
    await bob.waitForSelector(`.event >> text="${a.name} removed ${c.name}"`);
    const left = (await apiCall(c, "GET", "/chats")).body.chats;
    check(left.length === 0, "the removed member no longer has the group");
    await fitsTheScreen(bob, size);
    return shot(bob, `group-${size}`);
  },

  // Typing and presence travel over the per-user stream: Bob sees Alice
  // online and typing, then offline once her page is gone.
  async "typing and presence"(size) {
    const [a, b] = [await apiUser("typer"), await apiUser("watcher")];
    check((await apiCall(a, "POST", "/chats", { user_id: b.id })).status === 201, "chat");
    const bob = await page(size);
    await signIn(bob, b);
    await openListedChat(bob, a.name);
    check(await bob.isHidden("#presence"), "alice is not online yet");
    const alice = await page(size);
    await signIn(alice, a);
    await bob.waitForSelector("#presence:not([hidden])", { timeout: 5_000 });
    // (On a phone the list is hidden while a chat is open: attached is enough.)
    await bob.waitForSelector(`#chats .item.online >> text="${a.name}"`, { state: "attached", timeout: 5_000 });
    await openListedChat(alice, b.name);
    await alice.type("#text", "hel", { delay: 50 });
    await bob.waitForFunction((name) => document.getElementById("typing").textContent === `${name} is typing…`, a.name, { timeout: 5_000 });
    await shot(bob, `typing-${size}`);
    await alice.fill("#text", "hello");
    await alice.click("#send");
    await bob.waitForSelector('.msg:not(.mine) >> text="hello"', { timeout: 5_000 });
    // A message ends its sender's typing.
    check((await bob.textContent("#typing")) === "", "typing cleared by the message");
    await alice.context().close();
    await bob.waitForSelector("#presence", { state: "hidden", timeout: 10_000 });
    return shot(bob, `presence-${size}`);
  },

  // The server dies while Bob's page is connected; while it is away
  // (tickets blocked, so the page cannot reconnect) Alice sends five
  // messages. The page reconnects with its cursor and the stream brings
  // exactly those five, in order, none twice. At the phone width over the
  // WebSocket; at the desktop width with WebSocket unavailable, over SSE.
  async "a dropped stream resumes without loss or repeats"(size) {
    const transport = size === "phone" ? "websocket" : "sse";
    const [a, b] = [await apiUser("sender"), await apiUser("resumer")];
    const chat = (await apiCall(a, "POST", "/chats", { user_id: b.id })).body.id;
    const context = await browser.newContext({ viewport: WIDTHS[size] });
    if (transport === "sse") await context.addInitScript(() => { window.WebSocket = undefined; });
    const p = await context.newPage();
    const opened = [];
    p.on("request", (r) => { if (/\/(events|ws)\?/.test(r.url())) opened.push(r.url()); });
    p.on("websocket", (ws) => opened.push(ws.url()));
    await p.goto(base);
    await signIn(p, b);
    await openListedChat(p, a.name);
    await recordFrames(p);
    check((await apiCall(a, "POST", `/chat/${chat}/messages`, { text: "before" })).status === 201, "send");
    await p.waitForSelector('.msg >> text="before"', { timeout: 5_000 });
    const used = opened.filter((u) => u.includes(transport === "sse" ? "/events?" : "/ws?"));
    check(used.length >= 1, `a ${transport} stream was opened: ${JSON.stringify(opened)}`);

    await p.route("**/events/ticket", (route) => route.abort("connectionreset"));
    await killAndRestart();
    const missed = ["gap 1", "gap 2", "gap 3", "gap 4", "gap 5"];
    for (const text of missed) {
      check((await apiCall(a, "POST", `/chat/${chat}/messages`, { text })).status === 201, "send");
    }
    const from = (await p.evaluate(() => window.frames_.length));
    const before = opened.length;
    await p.unroute("**/events/ticket");
    await p.waitForSelector('.msg >> text="gap 5"', { timeout: 20_000 });
    await p.waitForTimeout(500);
    check(JSON.stringify(await frameTexts(p, from)) === JSON.stringify(missed), `after the drop: ${JSON.stringify(await frameTexts(p, from))}`);
    const resumed = opened.slice(before);
    check(resumed.some((u) => u.includes("cursor=")), `resumed with a cursor: ${JSON.stringify(resumed)}`);
    const shown = await texts(p);
    check(JSON.stringify(shown) === JSON.stringify(["before", ...missed]), `shown: ${JSON.stringify(shown)}`);
    const path = await shot(p, `resume-${transport}-${size}`);
    await context.close();
    return path;
  },

  async "form errors are shown by field"(size) {
    const p = await page(size);
    await p.fill("#username", "x");
    await p.fill("#password", "short");
    await p.click("#register");
    await p.waitForFunction(() => document.getElementById("password-error").textContent !== "");
    const errors = await p.evaluate(() => [
      document.getElementById("username-error").textContent,
      document.getElementById("password-error").textContent,
      document.getElementById("username").getAttribute("aria-invalid"),
    ]);
    check(errors[0].includes("username") && errors[1].includes("8") && errors[2] === "true", `field errors: ${errors}`);
    return shot(p, `form-errors-${size}`);
  },
};

let passed = 0;
let failed = 0;
try {
  await waitForHttp(`${base}/healthz`, 30_000);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--host-resolver-rules=MAP chat.test 127.0.0.1",
    ],
  });
  // The page's security headers: the cases below run under this policy,
  // so a script it did not allow would fail every one of them.
  const pageHeaders = (await fetch(base)).headers;
  const policy = pageHeaders.get("content-security-policy") || "";
  check(/script-src 'sha256-[A-Za-z0-9+/=]+'/.test(policy) && policy.includes("frame-ancestors 'none'"), `CSP: ${policy}`);
  check(pageHeaders.get("x-content-type-options") === "nosniff", "nosniff");
  for (const [name, run] of Object.entries(cases)) {
    for (const size of Object.keys(WIDTHS)) {
      try {
        const path = await run(size);
        console.log(`ok    ${name} (${size}): ${path}`);
        passed += 1;
      } catch (e) {
        console.error(`FAIL  ${name} (${size}): ${e.stack || e}`);
        failed += 1;
      }
    }
  }
} finally {
  if (browser) await browser.close();
  // Wait for the graceful stop: it still writes to the data directory
  // (final flush, positions) and removing it meanwhile fails.
  if (server.exitCode === null && server.signalCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
  rmSync(data, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
