// Browser test of the web client: the real all-in-one binary, two users in
// two headless Chromium pages. One sends; the other sees the message appear
// without reloading. A screenshot is kept in $ARTIFACTS_DIR (./artifacts).
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

const port = await freePort();
const data = mkdtempSync(join(tmpdir(), "chat-browser-"));
const server = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--data-dir", data], {
  stdio: ["ignore", "ignore", "inherit"],
  env: { ...process.env, RUST_LOG: "warn" },
});
const base = `http://127.0.0.1:${port}`;
let browser;
let passed = 0;
let failed = 0;

async function signUp(page, name) {
  await page.goto(base);
  await page.fill("#username", name);
  await page.fill("#password", "password123");
  await page.click("#register");
  await page.waitForSelector("#app:not([hidden])");
}

async function openChatWith(page, name) {
  await page.fill("#search", name);
  await page.click(`#results .item[data-username="${name}"]`);
  await page.waitForSelector("#composer:not([hidden])");
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

try {
  await waitForHttp(`${base}/healthz`, 30_000);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  // Separate contexts: separate sessions, like two people.
  const alice = await (await browser.newContext({ viewport: { width: 1000, height: 640 } })).newPage();
  const bob = await (await browser.newContext({ viewport: { width: 1000, height: 640 } })).newPage();

  await signUp(alice, "alice");
  await signUp(bob, "bob");
  await openChatWith(alice, "bob");
  await openChatWith(bob, "alice");

  const started = Date.now();
  await send(alice, "hello from alice");
  // Bob's page never reloads: the message arrives over the stream.
  await bob.waitForSelector('.msg:not(.mine) >> text="hello from alice"', { timeout: 5_000 });
  console.log(`bob saw alice's message ${Date.now() - started} ms after she sent it`);

  await send(bob, "hi alice, got it");
  await alice.waitForSelector('.msg:not(.mine) >> text="hi alice, got it"', { timeout: 5_000 });
  await send(alice, "great");
  await bob.waitForSelector('.msg:not(.mine) >> text="great"', { timeout: 5_000 });

  // Each message shows once on each side.
  for (const page of [alice, bob]) {
    const texts = await page.$$eval(".msg", (els) => els.map((e) => e.firstChild.textContent));
    const expected = ["hello from alice", "hi alice, got it", "great"];
    if (JSON.stringify(texts) !== JSON.stringify(expected)) {
      throw new Error(`messages on the page: ${JSON.stringify(texts)}`);
    }
  }

  // A reload shows the same conversation from history.
  await bob.reload();
  await bob.click(`#chats .item`);
  await bob.waitForSelector('.msg >> text="great"');

  const shot = join(artifacts, "browser-two-users.png");
  await bob.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);
  passed += 1;
} catch (e) {
  console.error(e);
  failed += 1;
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
