// The headless Chromium both browser scripts play in (`play.mjs`,
// `cross.mjs`), and the page they open in it, which records its errors
// into `result.errors`.

import { chromium } from "playwright-core";

/** Launches headless Chromium (`$CHROMIUM`, else /usr/bin/chromium);
 * QUIC is left on only when the page is to play over WebTransport. */
export async function launch({ quic = false } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", ...(quic ? [] : ["--disable-quic"]), "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** A page of the client's size whose uncaught errors go to `result.errors`. */
export async function openPage(browser, result) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.on("pageerror", (error) => result.errors.push(String(error)));
  return page;
}
