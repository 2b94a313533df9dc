// The flows a person (and an attacker) goes through in Debian's headless
// chromium, each browser profile a fresh context. Mail is read where the
// test SMTP server keeps it (<inbox>/<n>.json). Prints one JSON line.
//
//   node flows.mjs signup-click <base> <inbox> <email> <accept-language> <screenshot.png>
//     signs up in the browser, opens the mailed link in that same browser:
//     it lands signed in, without a click.
//   node flows.mjs forgot <base> <inbox> <email> <accept-language> <artifacts-dir>
//     from /login to "forgot password", the mail, the link, a new password,
//     landing signed in on /me; then a fresh browser signs in with it.
//   node flows.mjs email-change <base> <inbox> <email> <new-email> <artifacts-dir>
//     signs in, asks on /me for the new address, confirms from the mail
//     sent there, and sees the new address on /me.
//   node flows.mjs code <base> <inbox> <email> <artifacts-dir>
//     signs up, then verifies by typing the mail's code instead of clicking.
//   node flows.mjs login-csrf <base> <inbox> <emailA> <emailB> <artifacts-dir>
//     a second browser profile opens A's link: not signed in without a
//     click; A's browser, signed in, opens B's link (an attacker's) and
//     presses its button: it stays signed in as A.
import { chromium } from "playwright-core";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [flow, base, inbox, ...rest] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The link to `path` in the newest mail to `to`, waiting up to 30 s for it. */
async function mailLink(to, path = "/verify") {
  const pattern = new RegExp(`href="([^"]+${path.replaceAll("/", "\\/")}\\?[^"]+)"`);
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    let files = [];
    try {
      files = readdirSync(inbox).filter((f) => f.endsWith(".json"));
    } catch {}
    files.sort((a, b) => parseInt(b) - parseInt(a));
    for (const f of files) {
      const mail = JSON.parse(readFileSync(join(inbox, f), "utf8"));
      if (mail.rcpt_tos.includes(to)) {
        const m = pattern.exec(mail.html);
        if (m) return m[1].replaceAll("&amp;", "&");
      }
    }
    await sleep(100);
  }
  throw new Error(`no mail reached ${to}`);
}

/** The six-digit code in the newest mail to `to`. */
async function mailCode(to) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    let files = [];
    try {
      files = readdirSync(inbox).filter((f) => f.endsWith(".json"));
    } catch {}
    files.sort((a, b) => parseInt(b) - parseInt(a));
    for (const f of files) {
      const mail = JSON.parse(readFileSync(join(inbox, f), "utf8"));
      const m = /\b(\d{3}) (\d{3})\b/.exec(mail.text || "");
      if (mail.rcpt_tos.includes(to) && m) return m[1] + m[2];
    }
    await sleep(100);
  }
  throw new Error(`no code reached ${to}`);
}

async function sessionCookie(context) {
  return (await context.cookies()).find((c) => c.name.endsWith("session")) || null;
}

async function signUp(context, email, lang) {
  const page = await context.newPage();
  await page.goto(`${base}/signup?lang=${lang}`);
  await page.fill("#email", email);
  await page.fill("#password", "a good long password");
  await Promise.all([page.waitForLoadState("load"), page.click("button[type=submit]")]);
  await page.waitForSelector("h1");
  return page;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const profile = (acceptLanguage = "en-US,en;q=0.9") =>
  browser.newContext({
    locale: acceptLanguage.split(",")[0],
    extraHTTPHeaders: { "Accept-Language": acceptLanguage },
  });

try {
  if (flow === "signup-click") {
    const [email, acceptLanguage, shot] = rest;
    const lang = acceptLanguage.slice(0, 2);
    const context = await profile(acceptLanguage);
    const page = await signUp(context, email, lang);
    const link = await mailLink(email);
    await page.goto(link);
    // The page posts itself in this browser; wait for the page that follows.
    try {
      await page.waitForURL((u) => !u.pathname.startsWith("/verify"), { timeout: 15000 });
    } catch (e) {
      console.error(`stuck on ${page.url()}:\n${await page.content()}`);
      throw e;
    }
    await page.waitForLoadState("load");
    await page.screenshot({ path: shot, fullPage: true });
    const cookies = await context.cookies();
    console.log(JSON.stringify({
      link,
      url: page.url(),
      lang: await page.getAttribute("html", "lang"),
      title: await page.title(),
      text: await page.innerText("body"),
      cookies: cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure })),
    }));
  } else if (flow === "forgot") {
    const [email, acceptLanguage, dir] = rest;
    const lang = acceptLanguage.slice(0, 2);
    const context = await profile(acceptLanguage);
    const page = await context.newPage();
    await page.goto(`${base}/login?lang=${lang}`);
    await Promise.all([page.waitForLoadState("load"), page.click("#forgot-link")]);
    await page.fill("#email", email);
    await Promise.all([page.waitForLoadState("load"), page.click("button[type=submit]")]);
    const sent = await page.innerText("h1");
    const link = await mailLink(email, "/password/reset");
    await page.goto(link);
    await page.screenshot({ path: join(dir, `e2e-forgot-${lang}-reset.png`), fullPage: true });
    const named = await page.innerText("#reset-email");
    await page.fill("#password", "a brand new password");
    await Promise.all([
      page.waitForURL((u) => u.pathname.startsWith("/me"), { timeout: 15000 }),
      page.click("button[type=submit]"),
    ]);
    await page.screenshot({ path: join(dir, `e2e-forgot-${lang}-me.png`), fullPage: true });
    const me = { email: await page.innerText("#me-email"), text: await page.innerText("body") };
    // A fresh browser signs in with the new password.
    const fresh = await profile(acceptLanguage);
    const login = await fresh.newPage();
    await login.goto(`${base}/login?lang=${lang}`);
    await login.fill("#email", email);
    await login.fill("#password", "a brand new password");
    await Promise.all([
      login.waitForURL((u) => u.pathname.startsWith("/me"), { timeout: 15000 }),
      login.click("button[type=submit]"),
    ]);
    console.log(JSON.stringify({
      sent,
      link,
      named,
      me,
      freshLogin: await login.innerText("#me-email"),
      lang: await login.getAttribute("html", "lang"),
    }));
  } else if (flow === "email-change") {
    const [email, newEmail, dir] = rest;
    const context = await profile();
    const page = await context.newPage();
    await page.goto(`${base}/login?lang=en`);
    await page.fill("#email", email);
    await page.fill("#password", "a good long password");
    await Promise.all([
      page.waitForURL((u) => u.pathname.startsWith("/me"), { timeout: 15000 }),
      page.click("button[type=submit]"),
    ]);
    await page.fill("#new_email", newEmail);
    await page.fill("#email_password", "a good long password");
    await Promise.all([
      page.waitForURL((u) => u.searchParams.get("done") === "email", { timeout: 15000 }),
      page.click("form[action^='/email/change'] button[type=submit]"),
    ]);
    const asked = await page.innerText(".done");
    const before = await page.innerText("#me-email");
    const link = await mailLink(newEmail, "/email/confirm");
    await page.goto(link);
    await page.screenshot({ path: join(dir, "e2e-email-change-confirm.png"), fullPage: true });
    const confirmPage = await page.innerText("main");
    await Promise.all([page.waitForLoadState("load"), page.click("#confirm-email button[type=submit]")]);
    await page.waitForSelector("h1");
    const confirmed = await page.innerText("main");
    await page.goto(`${base}/me?lang=en`);
    await page.screenshot({ path: join(dir, "e2e-email-change-me.png"), fullPage: true });
    console.log(JSON.stringify({ asked, before, confirmPage, confirmed, after: await page.innerText("#me-email") }));
  } else if (flow === "code") {
    const [email, dir] = rest;
    const context = await profile();
    const page = await signUp(context, email, "en");
    const code = await mailCode(email);
    await Promise.all([page.waitForLoadState("load"), page.click("#code-link")]);
    await page.fill("#email", email);
    await page.fill("#code", `${code.slice(0, 3)} ${code.slice(3)}`);
    await page.screenshot({ path: join(dir, "e2e-code-entry.png"), fullPage: true });
    await Promise.all([
      page.waitForURL((u) => u.pathname.startsWith("/me"), { timeout: 15000 }),
      page.click("button[type=submit]"),
    ]);
    console.log(JSON.stringify({ code, me: await page.innerText("#me-email"), session: await sessionCookie(context) }));
  } else if (flow === "login-csrf") {
    const [emailA, emailB, dir] = rest;
    // A signs up in their own browser.
    const a = await profile();
    const pageA = await signUp(a, emailA, "en");
    const linkA = await mailLink(emailA);

    // Another profile opens A's link (a scanner that runs script, or A's
    // link sent to someone else): it stays on the page, not signed in.
    const other = await profile();
    const pageOther = await other.newPage();
    await pageOther.goto(linkA);
    await pageOther.waitForLoadState("load");
    await sleep(1500);
    await pageOther.screenshot({ path: join(dir, "e2e-other-browser-verify.png"), fullPage: true });
    const otherResult = {
      url: pageOther.url(),
      text: await pageOther.innerText("body"),
      session: await sessionCookie(other),
    };

    // A opens their own link: signed in without a click.
    await pageA.goto(linkA);
    await pageA.waitForURL((u) => u.pathname.startsWith("/me"), { timeout: 15000 });
    const aMe = await pageA.innerText("#me-email");

    // The attacker signs up B in their browser and sends A the link.
    const attacker = await profile();
    await signUp(attacker, emailB, "en");
    const linkB = await mailLink(emailB);
    await pageA.goto(linkB);
    await pageA.waitForLoadState("load");
    await sleep(1500);
    const beforeClick = { url: pageA.url(), text: await pageA.innerText("body") };
    // The page asks for B's sign-up password; A types their own (the
    // attacker's is not theirs to know) and presses the button.
    await pageA.fill("#password", "a good long password, but A's");
    await Promise.all([pageA.waitForNavigation({ waitUntil: "load" }), pageA.click("#verify button[type=submit]")]);
    await pageA.waitForSelector("h1");
    await pageA.screenshot({ path: join(dir, "e2e-signed-in-opens-other-link.png"), fullPage: true });
    const afterClick = { url: pageA.url(), text: await pageA.innerText("body") };
    await pageA.goto(`${base}/me?lang=en`);
    const stillMe = await pageA.innerText("#me-email");
    console.log(JSON.stringify({ other: otherResult, aMe, beforeClick, afterClick, stillMe }));
  } else {
    throw new Error(`unknown flow ${flow}`);
  }
} finally {
  await browser.close();
}
