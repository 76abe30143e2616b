// Drives herald's dashboard (GET /) in a real Chromium (playwright-core with
// the system's browser: nothing is downloaded), as a person would: follows
// topics, publishes, enqueues and watches a task, lives through a server
// restart, and gives a token to a server with authorization on.
//
// Usage: node dashboard.mjs CHROMIUM ORIGIN AUTH_ORIGIN TOKEN GATE SHOTS
//
// ORIGIN is a server without authorization, with a `herald task work jobs`
// worker whose command reports progress 0.5 and then waits until the file
// GATE exists. AUTH_ORIGIN wants tokens; TOKEN may do everything. SHOTS is
// the directory for screenshots.
//
// stdout, one JSON object a line: {"step":…} after each step; {"ask":
// "restart"} when the test should restart ORIGIN's server, after which stdin
// brings one line {"TOPIC":[ids…],…}: every event id of the followed topics,
// as the server holds them once it is back; then {"shown":…} (the ids the
// page shows per topic, oldest first, and its gap notices), and at the end
// {"done":true,"console":[…],"unexpected":[…],"shots":[…]}.
//
// Every wait is on page state, bounded; the script exits non-zero with the
// reason on stderr when one runs out, and after LIMIT_MS in all.

import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [executablePath, origin, authOrigin, token, gate, shots] = process.argv.slice(2);
if (!shots) {
  process.stderr.write("usage: node dashboard.mjs CHROMIUM ORIGIN AUTH_ORIGIN TOKEN GATE SHOTS\n");
  process.exit(2);
}

const WAIT = { timeout: 20_000 };
const LIMIT_MS = 150_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// Console errors, with the phase they came in. Only two kinds are expected,
// each in its phase: the browser's own report of a refused connection while
// the server restarts, and of a 401 before the token is given.
let phase = "open";
const consoleErrors = [];
const EXPECTED = {
  restart: /ERR_CONNECTION_REFUSED|WebSocket connection to .* failed/,
  auth: /status of 401/,
};

function watch(page) {
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push({ phase, text: m.text() });
  });
  page.on("pageerror", (e) => consoleErrors.push({ phase, text: `uncaught: ${e.message}` }));
}

const unexpected = () =>
  consoleErrors.filter((e) => !(EXPECTED[e.phase] && EXPECTED[e.phase].test(e.text)));

function check(ok, what) {
  if (!ok) throw new Error(what);
}

/** The event row of id `id`, once shown. */
async function eventRow(page, id) {
  const row = page.locator(`#tail li.event[data-id="${id}"]`);
  await row.waitFor(WAIT);
  return row;
}

/** Follows `topic` from the form and waits for its stream to be live. */
async function follow(page, topic) {
  await page.getByLabel("Follow topic").fill(topic);
  await page.getByRole("button", { name: "Follow", exact: true }).click();
  await page.locator(`#follows li[data-topic="${topic}"][data-state="live"]`).waitFor(WAIT);
}

/** Publishes from the form; the id the page was answered. */
async function publish(page, topic, type, data) {
  const before = await page.locator("#publish-result").textContent();
  await page.getByLabel("Topic", { exact: true }).fill(topic);
  await page.getByLabel("Event type").fill(type);
  await page.getByLabel("Data").fill(data);
  await page.getByRole("button", { name: "Publish" }).click();
  await page.waitForFunction(
    (before) => {
      const t = document.getElementById("publish-result").textContent;
      return t !== before && t.startsWith("Published");
    },
    before,
    WAIT,
  );
  const text = await page.locator("#publish-result").textContent();
  const id = text.match(/ as (\S+)$/)?.[1];
  check(id, `no id in ${JSON.stringify(text)}`);
  return id;
}

/** Checks the row of event `id`: its type, topic and exact data. */
async function sawEvent(page, id, topic, type, data) {
  const row = await eventRow(page, id);
  const got = {
    topic: await row.locator(".topic").textContent(),
    type: await row.locator(".type").textContent(),
    id: await row.locator(".id").textContent(),
    data: await row.locator(".data").textContent(),
    time: await row.locator("time").textContent(),
  };
  check(got.topic === topic && got.type === type && got.id === id, `row ${id}: ${JSON.stringify(got)}`);
  check(got.data === data, `row ${id} data ${JSON.stringify(got.data)}, want ${JSON.stringify(data)}`);
  check(/^\d\d:\d\d:\d\d\.\d{3}$/.test(got.time), `row ${id} time ${got.time}`);
}

async function shoot(page, name, fullPage = false) {
  const path = join(shots, name);
  await page.screenshot({ path, fullPage });
  return path;
}

const browser = await chromium.launch({ executablePath, headless: true });
const watchdog = setTimeout(async () => {
  process.stderr.write(`dashboard.mjs: not done after ${LIMIT_MS / 1000} s\n`);
  await browser.close();
  process.exit(1);
}, LIMIT_MS);

try {
  mkdirSync(shots, { recursive: true });
  const taken = [];
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  watch(page);

  // 1. The page opens, reaches the server, lists; no console error.
  await page.goto(`${origin}/`);
  await page.locator("#health.ok").waitFor(WAIT);
  check(unexpected().length === 0, `console errors on open: ${JSON.stringify(consoleErrors)}`);
  say({ step: "open" });

  // 2. Follow a topic, publish to it with an event type and multi-line data.
  await follow(page, "alpha");
  const alertData = "first line\n  second line, indented\n\nafter an empty one";
  const alert = await publish(page, "alpha", "alert", alertData);
  await sawEvent(page, alert, "alpha", "alert", alertData);
  say({ step: "publish", id: alert });

  // 3. A second topic; events of both show.
  await follow(page, "beta");
  const b1 = await publish(page, "beta", "message", "to beta <b>not bold</b>");
  const a2 = await publish(page, "alpha", "update", "to alpha again");
  await sawEvent(page, b1, "beta", "message", "to beta <b>not bold</b>");
  await sawEvent(page, a2, "alpha", "update", "to alpha again");
  check((await page.locator("#tail b").count()) === 0, "event data became HTML");
  say({ step: "two topics", ids: [b1, a2] });

  // 4. Enqueue a task; its bar stops at the worker's 50 %, then reaches
  //    100 % with the result once the worker is let go.
  await page.getByLabel("Queue", { exact: true }).fill("jobs");
  await page.getByLabel("Payload is").selectOption("json");
  await page.locator("#enqueue-payload").fill('{"n": 7}');
  await page.getByRole("button", { name: "Enqueue" }).click();
  await page.waitForFunction(() => document.getElementById("enqueue-result").textContent.startsWith("Enqueued"), null, WAIT);
  const task = (await page.locator("#enqueue-result").textContent()).split(" ")[1];
  const row = page.locator(`#tasks li.task[data-id="${task}"]`);
  await row.locator('.bar[aria-valuenow="50"]').waitFor(WAIT);
  check((await row.getAttribute("data-status")) === "running", "running at 50 %");
  const halfway = await row.locator(".message").textContent();
  writeFileSync(gate, "go");
  await page.locator(`#tasks li.task[data-id="${task}"][data-status="succeeded"] .bar[aria-valuenow="100"]`).waitFor(WAIT);
  const outcome = await row.locator(".outcome").textContent();
  check(JSON.parse(outcome).echo.n === 7, `result ${outcome}`);
  // The queue's row counts it once the overview refreshes.
  await page.locator("#queues tbody tr", { hasText: "jobs" }).waitFor(WAIT);
  say({ step: "task", id: task, halfway, outcome: JSON.parse(outcome) });

  // 5. The server restarts; the tail resumes with nothing lost or doubled.
  phase = "restart";
  say({ ask: "restart" });
  const { value: line, done } = await stdin.next();
  check(!done, "stdin closed before the ids came");
  const want = JSON.parse(line);
  for (const [topic, ids] of Object.entries(want)) {
    await eventRow(page, ids[ids.length - 1]);
    await page.locator(`#follows li[data-topic="${topic}"][data-state="live"]`).waitFor(WAIT);
  }
  const shown = await page.evaluate(() => {
    const byTopic = {};
    for (const li of [...document.querySelectorAll("#tail li.event")].reverse()) {
      (byTopic[li.dataset.topic] ??= []).push(li.dataset.id);
    }
    const opens = {};
    for (const chip of document.querySelectorAll("#follows li")) opens[chip.dataset.topic] = Number(chip.dataset.opens);
    return { ids: byTopic, gaps: document.querySelectorAll("#tail li.gap").length, opens };
  });
  say({ shown });
  phase = "after restart";

  // Screenshots: desktop, then phone width, which must not scroll sideways.
  // First the overview catches up with the restart: it counts every event.
  await page.waitForFunction(
    (want) =>
      Object.entries(want).every(([topic, ids]) =>
        [...document.querySelectorAll("#topics tbody tr")].some(
          (tr) => tr.cells[0].textContent === topic && tr.cells[1].textContent === String(ids.length),
        ),
      ),
    want,
    WAIT,
  );
  taken.push(await shoot(page, "desktop.png"), await shoot(page, "desktop-full.png", true));
  await page.setViewportSize(PHONE);
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  check(widths.scroll <= widths.inner, `phone width scrolls sideways: ${JSON.stringify(widths)}`);
  taken.push(await shoot(page, "phone.png"), await shoot(page, "phone-full.png", true));
  say({ step: "screenshots", widths });

  // 6. Authorization on: the page asks for a token, then works with it.
  phase = "auth";
  const secure = await browser.newContext({ viewport: DESKTOP });
  const authed = await secure.newPage();
  watch(authed);
  await authed.goto(`${authOrigin}/`);
  const dialog = authed.locator("#token-dialog[open]");
  await dialog.waitFor(WAIT);
  taken.push(await shoot(authed, "token.png"));
  await authed.getByLabel("Token", { exact: true }).fill(token);
  await authed.getByRole("button", { name: "Use token" }).click();
  await dialog.waitFor({ state: "hidden", ...WAIT });
  phase = "with token";
  await follow(authed, "secure");
  const sealed = await publish(authed, "secure", "note", "behind a token");
  await sawEvent(authed, sealed, "secure", "note", "behind a token");
  await authed.locator("#topics tbody tr", { hasText: "secure" }).waitFor(WAIT);
  check(
    (await authed.evaluate(() => sessionStorage.getItem("herald.token"))) === token,
    "the token is kept in sessionStorage",
  );
  say({ step: "auth", id: sealed });

  clearTimeout(watchdog);
  await browser.close();
  say({ done: true, console: consoleErrors, unexpected: unexpected(), shots: taken });
  process.exit(0);
} catch (e) {
  process.stderr.write(`dashboard.mjs (${phase}): ${e.stack ?? e}\n`);
  process.stderr.write(`console errors: ${JSON.stringify(consoleErrors)}\n`);
  await browser.close();
  process.exit(1);
}
