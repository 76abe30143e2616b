// The task cycle, side by side: herald and BullMQ driven by the same Node
// process shape. P producers each enqueue a small JSON job and wait for its
// result, over and over; W workers complete each job at once, echoing its
// payload. Reports tasks/s, latency (enqueue sent to result in hand: p50,
// p99, max) and, given the server's pids, the server's CPU per task. Every
// job must be told exactly once, with its own result; for herald the
// server's herald_tasks{queue,status="succeeded"} must count the same.
//
//   node tasks.mjs --system herald --url http://127.0.0.1:7171 [--flow http|ws]
//   node tasks.mjs --system bullmq --redis redis://127.0.0.1:6379
//   common: --producers 16 --workers 16 --seconds 10 --warmup 2
//           --server-pid PID[,PID…]   (CPU of them all: herald and its redis-server)
//
// herald flows:
//   http  the four requests of today's API: POST /queues/Q/tasks, then
//         GET /tasks/ID?wait=30; workers POST /queues/Q/claim?wait=1 (short,
//         so they notice the end at once) and
//         POST /tasks/ID/complete with Herald-Lease.
//   ws    producers POST /queues/Q/tasks?wait=30 (one request: enqueue and
//         wait; 408 → GET /tasks/ID?wait=30); workers share --sockets work
//         sockets (default 1, like BullMQ's one Worker), each
//         GET /queues/Q/work?lease=30&count=ceil(W/sockets), completing each
//         pushed task with {"op":"complete",…}.
//
// One JSON line on stdout; exit status 1 when a check failed.

import { execSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const system = args.system ?? 'herald';
const flow = system === 'herald' ? (args.flow ?? 'http') : null;
const producers = Number(args.producers ?? 16);
const workers = Number(args.workers ?? 16);
const sockets = Number(args.sockets ?? 1);
const seconds = Number(args.seconds ?? 10);
const warmup = Number(args.warmup ?? 2);
const serverPids = (args['server-pid'] ?? '').split(',').filter(Boolean);
const queueName = args.queue ?? `bench${process.pid}x${Date.now()}`;

/** Fails the run with a message on stderr: a bench must not report half a run. */
function die(msg) {
  console.error(`tasks.mjs: ${msg}`);
  process.exit(1);
}

if (!['herald', 'bullmq'].includes(system)) die(`--system herald|bullmq, not ${system}`);
if (flow && !['http', 'ws'].includes(flow)) die(`--flow http|ws, not ${flow}`);

// /proc/PID/stat counts CPU in clock ticks; ask once how long one is.
const clkTck = Number(execSync('getconf CLK_TCK').toString().trim()) || 100;

/** The servers' CPU time so far, in seconds (utime + stime, summed), or null. */
function serverCpu() {
  if (serverPids.length === 0) return null;
  let sum = 0;
  for (const pid of serverPids) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    sum += (Number(fields[11]) + Number(fields[12])) / clkTck;
  }
  return sum;
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// ---- herald ------------------------------------------------------------------

async function heraldSystem() {
  const { Pool, WebSocket } = await import('undici');
  const pool = new Pool(args.url, { connections: producers + workers + 8, pipelining: 1 });
  const json = { 'content-type': 'application/json' };
  let stopping = false;

  async function call(method, path, body, headers = {}) {
    const res = await pool.request({ method, path, body, headers });
    const text = await res.body.text();
    return { status: res.statusCode, text };
  }

  /** GET /tasks/ID?wait=30 until finished: the task. */
  async function longPoll(id) {
    for (;;) {
      const got = await call('GET', `/tasks/${id}?wait=30`);
      if (got.status === 408) continue;
      if (got.status !== 200) throw new Error(`wait: ${got.status} ${got.text}`);
      return JSON.parse(got.text);
    }
  }

  // -- http: claim and complete, W loops on the pool.
  async function workerLoop() {
    while (!stopping) {
      const claim = await call('POST', `/queues/${queueName}/claim?wait=1&lease=30`);
      if (claim.status === 204) continue;
      if (claim.status !== 200) throw new Error(`claim: ${claim.status} ${claim.text}`);
      const { task, lease } = JSON.parse(claim.text);
      const done = await call('POST', `/tasks/${task.id}/complete`, JSON.stringify(task.payload), {
        ...json,
        'herald-lease': lease.token,
      });
      if (done.status !== 200) throw new Error(`complete: ${done.status} ${done.text}`);
    }
  }

  async function runHttp(payload) {
    const made = await call('POST', `/queues/${queueName}/tasks`, JSON.stringify(payload), json);
    if (made.status !== 201) throw new Error(`enqueue: ${made.status} ${made.text}`);
    return longPoll(JSON.parse(made.text).id);
  }

  // -- ws: one request per producer, work sockets for the workers.
  async function runWs(payload) {
    const path = `/queues/${queueName}/tasks?wait=30`;
    const got = await call('POST', path, JSON.stringify(payload), json);
    if (got.status === 200) return JSON.parse(got.text);
    if (got.status === 408) return longPoll(JSON.parse(got.text).id);
    if ([201, 400, 404].includes(got.status)) {
      die(`--flow ws: the server answered ${got.status} to POST ${path}: it cannot enqueue and wait in one request (a herald with ?wait= on enqueue is needed)`);
    }
    throw new Error(`enqueue?wait: ${got.status} ${got.text}`);
  }

  let completed = 0;
  let asked = 0; // completes sent, answered or not
  let answered = 0;
  let allAnswered = null; // resolves once answered === asked, while closing
  function workSocket(count) {
    const base = args.url.replace(/^http/, 'ws');
    const path = `/queues/${queueName}/work?lease=30&count=${count}`;
    const ws = new WebSocket(`${base}${path}`);
    let ref = 0;
    let open = false;
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'task') {
        asked++;
        ws.send(JSON.stringify({ op: 'complete', id: m.task.id, lease: m.lease.token, result: m.task.payload, ref: ++ref }));
      } else if (m.type === 'ok' && m.status === 'succeeded') {
        completed++;
        answered++;
        if (allAnswered && answered === asked) allAnswered();
      } else {
        die(`work socket: ${e.data}`);
      }
    };
    const opened = new Promise((resolve) => {
      ws.onopen = () => {
        open = true;
        resolve();
      };
      // undici reports a refused upgrade (a 404) as an error before open.
      ws.onerror = (e) => {
        if (!open) die(`--flow ws: the work socket GET ${path} did not open (${e.message || e.error?.message || 'refused'}): a 404 means this herald has no /queues/Q/work socket`);
      };
    });
    ws.onclose = (e) => {
      if (!stopping) die(`work socket closed by the server: ${e.code} ${e.reason}`);
    };
    return { ws, opened };
  }

  let loops = [];
  let socks = [];
  if (flow === 'http') {
    loops = Array.from({ length: workers }, workerLoop);
  } else {
    const per = Math.ceil(workers / sockets);
    socks = Array.from({ length: sockets }, () => workSocket(per));
    await Promise.all(socks.map((s) => s.opened));
  }

  /** herald_tasks{queue=Q,status=succeeded} from /metrics. */
  async function succeeded() {
    const text = (await call('GET', '/metrics')).text;
    const line = text
      .split('\n')
      .find((l) => l.startsWith('herald_tasks{') && l.includes(`queue="${queueName}"`) && l.includes('status="succeeded"'));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  return {
    run: flow === 'http' ? runHttp : runWs,
    async close() {
      stopping = true;
      await Promise.all(loops);
      // A producer may hear of its result before the worker hears its
      // complete answered (both follow the same commit): wait for the
      // answers still on their way before closing, for at most 10 s.
      if (answered < asked) {
        await Promise.race([
          new Promise((resolve) => { allAnswered = resolve; }),
          new Promise((resolve) => setTimeout(resolve, 10000)),
        ]);
      }
      for (const s of socks) s.ws.close(1000);
      const counted = await succeeded();
      await pool.close();
      return { server_succeeded: counted, worker_completed: flow === 'ws' ? completed : undefined };
    },
  };
}

// ---- BullMQ ----------------------------------------------------------------

async function bullmqSystem() {
  const { Queue, QueueEvents, Worker } = await import('bullmq');
  const url = new URL(args.redis ?? 'redis://127.0.0.1:6379');
  const connection = { host: url.hostname, port: Number(url.port || 6379) };
  const queue = new Queue(queueName, { connection });
  const events = new QueueEvents(queueName, { connection });
  // Each waiting producer listens on both: not a leak.
  queue.setMaxListeners(producers * 4);
  events.setMaxListeners(producers * 4);
  await events.waitUntilReady();
  const worker = new Worker(queueName, async (job) => job.data, {
    connection,
    concurrency: workers,
  });
  await worker.waitUntilReady();
  return {
    async run(payload) {
      const job = await queue.add('t', payload);
      const result = await job.waitUntilFinished(events, 30000);
      return { status: 'succeeded', result };
    },
    async close() {
      await worker.close();
      await events.close();
      await queue.obliterate({ force: true });
      await queue.close();
      return {};
    },
  };
}

// ---- the run ---------------------------------------------------------------

const sys = system === 'bullmq' ? await bullmqSystem() : await heraldSystem();
const told = new Map();
const latencies = [];
let measuring = false;
let sent = 0;
let wrong = 0;
let stop = false;

async function producer(p) {
  for (let seq = 0; !stop; seq++) {
    const t0 = performance.now();
    sent++;
    const task = await sys.run({ p, seq });
    const ms = performance.now() - t0;
    const key = `${p}/${seq}`;
    if (task.status !== 'succeeded' || task.result?.p !== p || task.result?.seq !== seq) {
      wrong++;
      console.error(`task ${key} told ${JSON.stringify(task.result)} (${task.status})`);
    }
    told.set(key, (told.get(key) ?? 0) + 1);
    if (measuring) latencies.push(ms);
  }
}

const running = Array.from({ length: producers }, (_, p) => producer(p));
await new Promise((r) => setTimeout(r, warmup * 1000));
measuring = true;
const cpu0 = serverCpu();
const t0 = performance.now();
await new Promise((r) => setTimeout(r, seconds * 1000));
measuring = false;
const elapsed = (performance.now() - t0) / 1000;
const cpu1 = serverCpu();
const done = latencies.length;
stop = true;
await Promise.all(running);
const closing = await sys.close();

const doubled = [...told.values()].filter((c) => c !== 1).length;
const serverAgrees = closing.server_succeeded === undefined || closing.server_succeeded === told.size;
const workersAgree = closing.worker_completed === undefined || closing.worker_completed === told.size;
const exactlyOnce = told.size === sent && doubled === 0 && wrong === 0 && serverAgrees && workersAgree;
latencies.sort((a, b) => a - b);
const report = {
  system,
  flow,
  producers,
  workers,
  seconds,
  tasks: done,
  tasks_per_s: Math.round(done / elapsed),
  p50_ms: Number(quantile(latencies, 0.5)?.toFixed(2)),
  p99_ms: Number(quantile(latencies, 0.99)?.toFixed(2)),
  max_ms: Number(latencies.at(-1)?.toFixed(2)),
  server_cpu_s: cpu0 === null ? null : Number((cpu1 - cpu0).toFixed(2)),
  server_cpu_us_per_task: cpu0 === null ? null : Math.round(((cpu1 - cpu0) / done) * 1e6),
  sent,
  told: told.size,
  ...closing,
  exactly_once: exactlyOnce,
};
console.log(JSON.stringify(report));
process.exit(exactlyOnce && done > 0 ? 0 : 1);
