// Follows an SSE URL with the `eventsource` npm package (a WHATWG
// EventSource on fetch, written by nobody here) until COUNT messages arrived.
//
// Usage: node follow.mjs URL COUNT
//
// stdout: the line `ready` after the first `open`; then, as things happen,
// `got ID` for every message and `error` when a stream ended (the client will
// reconnect) or `error MESSAGE` when a connection attempt failed (e.g.
// refused), so that a test can wait for them; then, after COUNT messages, one
// JSON line
//   {"events":[{"id":…,"data":…},…],"opens":N,"gaps":[…]}
// where `opens` counts connections (the client reconnects by itself, sending
// Last-Event-ID) and `gaps` holds the data of any `gap` events (there should
// be none while the client holds a retained cursor).
// Exits non-zero, with the reason on stderr, if nothing arrives for 30 s or
// the EventSource gives up for good.

import { EventSource } from "eventsource";

const [url, countArg] = process.argv.slice(2);
const count = Number.parseInt(countArg ?? "", 10);
if (!url || !Number.isInteger(count) || count < 1) {
  process.stderr.write("usage: node follow.mjs URL COUNT\n");
  process.exit(2);
}

const QUIET_LIMIT_MS = 30_000;
const events = [];
const gaps = [];
let opens = 0;
let errors = 0;

const es = new EventSource(url);

let watchdog;
function armWatchdog() {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    fail(
      `nothing arrived for ${QUIET_LIMIT_MS / 1000} s ` +
        `(${events.length}/${count} events, ${opens} opens, ${errors} errors)`,
    );
  }, QUIET_LIMIT_MS);
}

function finish(code, stdoutLine, stderrLine) {
  clearTimeout(watchdog);
  es.close();
  if (stderrLine) process.stderr.write(`follow.mjs: ${stderrLine}\n`);
  const exit = () => process.exit(code);
  if (stdoutLine) process.stdout.write(stdoutLine + "\n", exit);
  else exit();
}

function fail(why) {
  finish(1, null, `${why}; events so far: ${JSON.stringify(events)}`);
}

es.addEventListener("open", () => {
  opens += 1;
  if (opens === 1) process.stdout.write("ready\n");
});

es.addEventListener("message", (e) => {
  armWatchdog();
  events.push({ id: e.lastEventId, data: e.data });
  process.stdout.write(`got ${e.lastEventId}\n`);
  if (events.length === count) {
    finish(0, JSON.stringify({ events, opens, gaps }));
  }
});

es.addEventListener("gap", (e) => {
  gaps.push(e.data);
});

es.addEventListener("error", (e) => {
  errors += 1;
  const message = (e.message ?? "").replace(/\s+/g, " ").trim();
  process.stdout.write(message ? `error ${message}\n` : "error\n");
  // A dropped stream is an `error` followed by a reconnect; CLOSED means the
  // client gave up for good (e.g. an error status), which the test must see.
  if (es.readyState === EventSource.CLOSED) {
    fail(`EventSource closed for good: ${e.message ?? "error"} (status ${e.code ?? "?"})`);
  }
});

armWatchdog();
