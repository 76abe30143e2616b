// The founding article's task-queue client, as that article writes it: it
// waits for a task's result on `/api/queue` by long poll, by short poll or by
// Server-Sent Events (plain `fetch` and the `eventsource` npm package's
// WHATWG EventSource, written by nobody here).
//
// Usage: node queue.mjs BASE MODE ID
//   BASE  the server, e.g. http://127.0.0.1:8080
//   MODE  long  — GET /api/queue?id=ID&ttl=300 again after every 408
//         short — GET /api/queue?id=ID every 100 ms, at most 150 times
//         sse   — EventSource on /api/queue?id=ID
//   ID    the task id `POST /api/queue` answered
//
// stdout, so that a test can follow along:
//   `ready` once the client has started waiting (poll modes: before the first
//   request; sse: after the first `open`);
//   `request STATUS` after every HTTP response in the poll modes;
//   `wait N` for every `wait` event in sse mode;
//   then one JSON line
//     {"task": TASK, "waits": [N, …], "requests": COUNT}
//   where `waits` holds the queue positions seen (sse) and `requests` the
//   number of HTTP requests made (poll modes; null for sse); exit 0.
// On failure: the reason on stderr, exit 1. Nothing may take longer than
// 30 s.

import { EventSource } from "eventsource";

const LONG_POLL_TTL_MS = 300;
const SHORT_POLL_INTERVAL_MS = 100;
const SHORT_POLL_MAX_ATTEMPTS = 150;
const OVERALL_LIMIT_MS = 30_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/// Long poll: ask again after every `408` (the server's "not yet").
export async function waitQueueLongPoll(base, id, ttl, hooks = {}) {
  for (;;) {
    const res = await fetch(
      `${base}/api/queue?id=${encodeURIComponent(id)}&ttl=${ttl}`,
    );
    hooks.onResponse?.(res.status);
    if (res.status === 408) {
      await res.body?.cancel();
      continue;
    }
    if (res.status === 200) return await res.json();
    throw new Error(`long poll: unexpected ${res.status}: ${await res.text()}`);
  }
}

/// Short poll: `204` while pending, `200` with the task once it finished.
export async function waitQueueShortPoll(base, id, interval, maxAttempts, hooks = {}) {
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const res = await fetch(`${base}/api/queue?id=${encodeURIComponent(id)}`);
    hooks.onResponse?.(res.status);
    if (res.status === 200) return await res.json();
    if (res.status !== 204) {
      throw new Error(`short poll: unexpected ${res.status}: ${await res.text()}`);
    }
    await sleep(interval);
  }
  throw new Error(`short poll: task ${id} not finished after ${maxAttempts} attempts`);
}

/// SSE: `wait` carries the queue position (a bare number), `done` the
/// finished task, and an `error` event with data the failed (or cancelled)
/// task. An `error` without data is the EventSource's own connection error:
/// it reconnects by itself unless it gave up (CLOSED).
export function waitQueueSSE(base, id, hooks = {}) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(`${base}/api/queue?id=${encodeURIComponent(id)}`);
    const settle = (fn, value) => {
      es.close();
      fn(value);
    };
    const task = (e, what) => {
      try {
        return JSON.parse(e.data);
      } catch (err) {
        settle(reject, new Error(`sse: ${what} data is not JSON: ${JSON.stringify(e.data)}`));
        return undefined;
      }
    };
    es.addEventListener("open", () => hooks.onOpen?.());
    es.addEventListener("wait", (e) => {
      const position = Number(e.data);
      if (!Number.isInteger(position) || String(position) !== e.data.trim()) {
        settle(reject, new Error(`sse: wait data is not a bare number: ${JSON.stringify(e.data)}`));
        return;
      }
      hooks.onWait?.(position);
    });
    es.addEventListener("done", (e) => {
      const t = task(e, "done");
      if (t !== undefined) settle(resolve, t);
    });
    es.addEventListener("error", (e) => {
      if (typeof e.data === "string") {
        const t = task(e, "error");
        if (t !== undefined) settle(resolve, t);
        return;
      }
      if (es.readyState === EventSource.CLOSED) {
        settle(
          reject,
          new Error(`sse: EventSource closed for good: ${e.message ?? "error"} (status ${e.code ?? "?"})`),
        );
      }
    });
  });
}

async function main() {
  const [base, mode, id] = process.argv.slice(2);
  if (!base || !id || !["long", "short", "sse"].includes(mode)) {
    process.stderr.write("usage: node queue.mjs BASE long|short|sse ID\n");
    process.exit(2);
  }
  const say = (line) => process.stdout.write(line + "\n");
  const waits = [];
  let requests = 0;
  const hooks = {
    onResponse: (status) => {
      requests += 1;
      say(`request ${status}`);
    },
    onWait: (position) => {
      waits.push(position);
      say(`wait ${position}`);
    },
  };

  let task;
  if (mode === "sse") {
    let opens = 0;
    hooks.onOpen = () => {
      opens += 1;
      if (opens === 1) say("ready");
    };
    task = await waitQueueSSE(base, id, hooks);
  } else if (mode === "long") {
    say("ready");
    task = await waitQueueLongPoll(base, id, LONG_POLL_TTL_MS, hooks);
  } else {
    say("ready");
    task = await waitQueueShortPoll(
      base,
      id,
      SHORT_POLL_INTERVAL_MS,
      SHORT_POLL_MAX_ATTEMPTS,
      hooks,
    );
  }
  const report = { task, waits, requests: mode === "sse" ? null : requests };
  process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(0));
}

const limit = setTimeout(() => {
  process.stderr.write(`queue.mjs: no result after ${OVERALL_LIMIT_MS / 1000} s\n`);
  process.exit(1);
}, OVERALL_LIMIT_MS);
limit.unref();

main().catch((err) => {
  process.stderr.write(`queue.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});
