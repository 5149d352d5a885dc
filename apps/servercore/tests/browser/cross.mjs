// Walks the browser client across a zone border of one world shared by two
// nodes, in headless Chromium, as a person would: opens the page of the
// node it starts on, logs in, holds an arrow key towards the other node's
// strip until the page has followed S_TRANSFER (the first node closes the
// connection, the page connects to the advertised WebSocket URL and logs in
// with the token), then walks on over there. Prints one JSON line with what
// it saw, then stays in game until its stdin closes; the Rust test that
// started the nodes judges it.
//
// usage: node cross.mjs URL ACCOUNT BORDER_X
// BORDER_X is where the strips meet: the page starts on the node of its
// side of it and walks to the other side.

import { launch, openPage } from "./chromium.mjs";

const [url, account, borderArg] = process.argv.slice(2);
const border = Number(borderArg);
const STEP_TIMEOUT = 20000;

const result = { loaded: false, inGame: false, startX: null, followedBefore: [], followed: [],
  inGameAfter: false, movedAfter: false, errors: [] };

const browser = await launch();
try {
  const page = await openPage(browser, result);
  await page.goto(url, { timeout: STEP_TIMEOUT });
  result.loaded = true;

  await page.fill("#account", account);
  await page.click("#play");
  // In game on the node owning where the account stands (a first node
  // that does not own it hands it over at once: that is followed too).
  await page.waitForFunction(() => window.servercore?.status === "in_game", null, { timeout: STEP_TIMEOUT });
  await page.waitForTimeout(500);
  await page.waitForFunction(() => window.servercore.status === "in_game", null, { timeout: STEP_TIMEOUT });
  result.inGame = true;
  const start = await page.evaluate(() => ({ ...window.servercore.self }));
  result.startX = start.x;
  result.followedBefore = await page.evaluate(() => [...window.servercore.followed]);
  const before = result.followedBefore.length;

  // Towards the other strip until handed over and in game there.
  await page.focus("#map");
  const key = start.x < border ? "ArrowRight" : "ArrowLeft";
  await page.keyboard.down(key);
  await page.waitForFunction((n) => window.servercore.followed.length > n, before, { timeout: STEP_TIMEOUT });
  await page.keyboard.up(key);
  await page.waitForFunction(() => window.servercore.status === "in_game", null, { timeout: STEP_TIMEOUT });
  result.inGameAfter = true;
  result.followed = await page.evaluate(() => [...window.servercore.followed]);

  // Walking on over there: the new node moves the player.
  const there = await page.evaluate(() => ({ ...window.servercore.self }));
  const vertical = there.y > 300 ? "w" : "s";
  await page.keyboard.down(vertical);
  await page.waitForTimeout(400);
  await page.keyboard.up(vertical);
  await page.waitForFunction(
    (s) => Math.hypot(window.servercore.self.x - s.x, window.servercore.self.y - s.y) > 10,
    there, { timeout: STEP_TIMEOUT });
  result.movedAfter = true;
  result.state = await page.evaluate(() => ({
    status: window.servercore.status,
    self: window.servercore.self,
    transport: window.servercore.transport,
    errors: window.servercore.errors,
  }));
} catch (error) {
  result.errors.push(String(error));
}
// The result first; the page stays in game until stdin closes (at most
// 30 s), so the test can look at the nodes meanwhile.
console.log(JSON.stringify(result));
if (result.errors.length === 0) {
  await new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.resume();
    setTimeout(resolve, 30000);
  });
}
await browser.close();
process.exit(result.errors.length === 0 ? 0 : 1);
