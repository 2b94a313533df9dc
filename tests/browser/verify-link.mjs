// Opens a verification link in Debian's headless chromium the way a person
// would (the GET page submits the POST by itself) and reports where the
// browser ended, its session cookie and the page text, as one JSON line.
// Usage: node verify-link.mjs <url> <screenshot.png> [accept-language]
import { chromium } from "playwright-core";

const [url, screenshot, acceptLanguage = "en-US,en;q=0.9"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({
    locale: acceptLanguage.split(",")[0],
    extraHTTPHeaders: { "Accept-Language": acceptLanguage },
  });
  const page = await context.newPage();
  await page.goto(url);
  // The page posts itself; wait for the page that follows.
  try {
    await page.waitForURL((u) => !u.pathname.startsWith("/verify"), { timeout: 15000 });
  } catch (e) {
    console.error(`stuck on ${page.url()}:\n${await page.content()}`);
    throw e;
  }
  await page.waitForLoadState("load");
  await page.screenshot({ path: screenshot, fullPage: true });
  const cookies = await context.cookies();
  console.log(JSON.stringify({
    url: page.url(),
    lang: await page.getAttribute("html", "lang"),
    title: await page.title(),
    text: await page.innerText("body"),
    cookies: cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure })),
  }));
} finally {
  await browser.close();
}
