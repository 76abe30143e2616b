// Opens COUNT EventSources from one page of a real Chromium (driven by
// playwright-core, with the system's browser: nothing is downloaded) on
// ORIGIN's /topics/TOPIC, and reports what each receives.
//
// Usage: node browser.mjs CHROMIUM ORIGIN TOPIC COUNT
//
// stdout: `ready PROTOCOL` once every EventSource is open (PROTOCOL is the
// page's `nextHopProtocol`, `h2` on HTTP/2); then, once each has received
// one message, one JSON line {"data":[…one message's data per source…]}.
// The certificate is self-signed: the browser context ignores HTTPS errors.
// Exits non-zero, with the reason on stderr, after 30 s without progress.

import { chromium } from "playwright-core";

const [executablePath, origin, topic, countArg] = process.argv.slice(2);
const count = Number.parseInt(countArg ?? "", 10);
if (!executablePath || !origin || !topic || !Number.isInteger(count)) {
  process.stderr.write("usage: node browser.mjs CHROMIUM ORIGIN TOPIC COUNT\n");
  process.exit(2);
}

const LIMIT_MS = 30_000;
const browser = await chromium.launch({ executablePath, headless: true });
const watchdog = setTimeout(async () => {
  process.stderr.write(`browser.mjs: no progress for ${LIMIT_MS / 1000} s\n`);
  await browser.close();
  process.exit(1);
}, LIMIT_MS);

try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${origin}/healthz`);
  const protocol = await page.evaluate(
    () => performance.getEntriesByType("navigation")[0].nextHopProtocol,
  );
  // Every source open, then every source's first message, as page state.
  await page.evaluate(
    ([topic, count]) => {
      window.received = new Array(count).fill(null);
      window.opened = 0;
      for (let i = 0; i < count; i++) {
        const es = new EventSource(`/topics/${encodeURIComponent(topic)}`);
        es.onopen = () => {
          window.opened += 1;
        };
        es.onmessage = (e) => {
          window.received[i] = e.data;
        };
      }
    },
    [topic, count],
  );
  await page.waitForFunction((count) => window.opened === count, count, {
    timeout: LIMIT_MS,
  });
  process.stdout.write(`ready ${protocol}\n`);
  await page.waitForFunction(
    () => window.received.every((d) => d !== null),
    null,
    { timeout: LIMIT_MS },
  );
  const data = await page.evaluate(() => window.received);
  clearTimeout(watchdog);
  await browser.close();
  process.stdout.write(JSON.stringify({ data }) + "\n", () => process.exit(0));
} catch (e) {
  process.stderr.write(`browser.mjs: ${e.stack ?? e}\n`);
  await browser.close();
  process.exit(1);
}
