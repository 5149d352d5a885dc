// Plays the browser client in headless Chromium, as a person would: opens
// the page, logs in, holds movement keys, watches for a given other player
// to appear and move on the canvas, sends a chat, waits for a chat from
// someone else, and saves a screenshot. Prints one JSON line with what it
// saw; the Rust test that started the server and the other players judges it.
//
// usage: node play.mjs URL ACCOUNT OTHER_NAME CHAT_TEXT EXPECT_CHAT SCREENSHOT [wt]
// With `wt` the page is opened with `?transport=wt` (QUIC enabled in the
// browser) and the result says which transport it used and how many
// datagrams it got.

import { launch, openPage } from "./chromium.mjs";

const [pageUrl, account, otherName, chatText, expectChat, screenshot, transport] = process.argv.slice(2);
const webTransport = transport === "wt";
const url = webTransport ? `${pageUrl}?transport=wt` : pageUrl;
const STEP_TIMEOUT = 15000;

const result = { loaded: false, inGame: false, moved: false, sawOther: false, otherMoved: false,
  chatSent: false, chatReceived: false, errors: [] };

const browser = await launch({ quic: webTransport });
try {
  const page = await openPage(browser, result);
  await page.goto(url, { timeout: STEP_TIMEOUT });
  result.loaded = true;

  await page.fill("#account", account);
  await page.click("#play");
  await page.waitForFunction(() => window.servercore?.status === "in_game", null, { timeout: STEP_TIMEOUT });
  result.inGame = true;
  const start = await page.evaluate(() => ({ ...window.servercore.self }));

  // Hold a direction for a moment; the server's own S_MOVE moves us.
  await page.focus("#map");
  const key = start.x > 100 ? "ArrowLeft" : "ArrowRight";
  await page.keyboard.down(key);
  await page.keyboard.down(start.y > 100 ? "w" : "s");
  await page.waitForTimeout(600);
  await page.keyboard.up(key);
  await page.keyboard.up(start.y > 100 ? "w" : "s");
  await page.waitForFunction(
    (s) => Math.hypot(window.servercore.self.x - s.x, window.servercore.self.y - s.y) > 10,
    start, { timeout: STEP_TIMEOUT });
  result.moved = true;

  // The other player (a dummy client moving back and forth) shows up and moves.
  const other = await page.waitForFunction((name) => {
    for (const p of window.servercore.players.values()) if (p.name === name) return { ...p };
    return null;
  }, otherName, { timeout: STEP_TIMEOUT });
  const seen = await other.jsonValue();
  result.sawOther = true;
  await page.waitForFunction(([name, x, y]) => {
    for (const p of window.servercore.players.values()) {
      if (p.name === name) return Math.hypot(p.x - x, p.y - y) > 1;
    }
    return false;
  }, [otherName, seen.x, seen.y], { timeout: STEP_TIMEOUT });
  result.otherMoved = true;

  await page.fill("#chat-input", chatText);
  await page.click("#chat-send");
  await page.waitForFunction((text) => window.servercore.chats.some((c) => c.msg === text),
    chatText, { timeout: STEP_TIMEOUT });
  result.chatSent = true;
  await page.waitForFunction((text) => window.servercore.chats.some((c) => c.msg === text),
    expectChat, { timeout: STEP_TIMEOUT });
  result.chatReceived = true;

  await page.waitForTimeout(200);
  await page.screenshot({ path: screenshot });
  result.state = await page.evaluate(() => ({
    status: window.servercore.status,
    self: window.servercore.self,
    players: [...window.servercore.players.values()].map((p) => p.name),
    chats: window.servercore.chats.map((c) => `${c.name}: ${c.msg}`),
    errors: window.servercore.errors,
    transport: window.servercore.transport,
    datagramsReceived: window.servercore.datagramsReceived,
  }));
} catch (error) {
  result.errors.push(String(error));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.errors.length === 0 ? 0 : 1);
