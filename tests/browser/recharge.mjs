// A cardholder recharges a card from the card company's page through `cardvm agent`, in
// Debian's chromium (headless), and a page from another origin is refused. Run by
// tests/browser.rs with PAGE_URL (the page, with ?agent=), SHOTS (a folder for the
// screenshots of each state). Exits non-zero with the reason on any failure.
import { chromium } from "playwright-core";
import http from "node:http";
import path from "node:path";

const PAGE_URL = process.env.PAGE_URL;
const AGENT_URL = process.env.AGENT_URL;
const SHOTS = process.env.SHOTS;
if (!PAGE_URL || !AGENT_URL || !SHOTS) throw new Error("PAGE_URL, AGENT_URL and SHOTS are required");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
         "--ignore-certificate-errors"],
});
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
const step = (what) => console.log(`browser: ${what}`);
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 900 } });
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  await page.goto(PAGE_URL);
  await page.waitForSelector('#reader-status[data-state="ok"]', { timeout: 20000 });
  await page.waitForSelector('#card-status[data-state="ok"]', { timeout: 20000 });
  step("paired with the agent; the card is on the reader");
  await shot(page, "1-connected");

  // Every input has a label; the buttons are reachable with the keyboard.
  const unlabeled = await page.$$eval("input", (xs) => xs.filter((x) => !x.labels || x.labels.length === 0).length);
  if (unlabeled !== 0) throw new Error(`${unlabeled} input(s) without a label`);
  await page.focus("#read");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.getElementById("card-balance").textContent === "5.00", null, { timeout: 20000 });
  step("card read with the keyboard: balance 5.00");
  await shot(page, "2-card");

  await page.fill("#amount", "100.00");
  await page.click("#recharge");
  await page.waitForSelector("dialog#confirm[open]");
  const question = await page.textContent("#confirm-text");
  if (!question.includes("100.00")) throw new Error(`confirmation does not show the amount: ${question}`);
  await shot(page, "3-confirm");
  await page.click("#confirm-ok");
  await page.waitForSelector('#result[data-code="loaded"]', { timeout: 60000 });
  const zh = await page.textContent("#result");
  if (!zh.includes("充值成功") || !zh.includes("105.00")) throw new Error(`result: ${zh}`);
  const steps = await page.$$eval("#steps li", (xs) => xs.map((x) => x.textContent));
  if (steps.length !== 5 || !steps[4].startsWith("[5/5]")) throw new Error(`steps: ${JSON.stringify(steps)}`);
  step(`recharged 100.00: ${zh}`);
  await shot(page, "4-result");
  await page.click("#lang-en");
  const en = await page.textContent("#result");
  if (!en.includes("Recharged.") || !en.includes("105.00")) throw new Error(`English result: ${en}`);
  await shot(page, "5-result-en");

  // Another page (another origin) tries the agent: the browser gets nothing.
  const server = http.createServer((_, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<!doctype html><title>waiting</title><script>
      fetch(${JSON.stringify(AGENT_URL)} + "/v1/pair", { method: "POST" })
        .then((r) => { document.title = "answered " + r.status; })
        .catch(() => { document.title = "refused"; });
    </script>`);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const other = await browser.newPage();
  await other.goto(`http://127.0.0.1:${server.address().port}/`);
  await other.waitForFunction(() => document.title !== "waiting", null, { timeout: 20000 });
  const title = await other.title();
  server.close();
  if (title !== "refused") throw new Error(`a foreign page reached the agent: ${title}`);
  step("a page from another origin was refused");
} finally {
  await browser.close();
}
