// Renders mail HTML parts in Debian's headless chromium, as a mail client's
// web view would, at the widths asked for; takes a screenshot of each and
// reports what a test checks: the page width against the screen, the text,
// and how the title's text may break (`word-break`).
// Usage: node render-mail.mjs '[{"html": file, "screenshot": png, "width": px}, ...]'
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const pages = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = [];
try {
  for (const p of pages) {
    const page = await browser.newPage({ viewport: { width: p.width, height: 800 } });
    // No network: a mail must not need any.
    await page.route("**/*", (route) => route.abort());
    await page.setContent(readFileSync(p.html, "utf8"), { waitUntil: "load" });
    await page.screenshot({ path: p.screenshot, fullPage: true });
    seen.push(await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
      text: document.body.innerText,
      wordBreak: getComputedStyle(document.querySelector("h1")).wordBreak,
    })));
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
