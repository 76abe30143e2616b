// Pages of two other origins talk to herald in a real Chromium (driven by
// playwright-core, with the system's browser: nothing is downloaded). Page A
// is on an origin herald lists in --cors-origin, page C on one it does not;
// both are served here, on two ports of 127.0.0.1: two origins of one site.
// A cookie is not bound to a port, so once the herald_token cookie is set
// the browser sends it whichever of the two pages asks.
//
// Usage: node cors.mjs CHROMIUM
//
// stdout, one JSON object a line:
//   {"origins":{"listed":ORIGIN_A,"other":ORIGIN_C}} once both pages are
//   served; then this script reads one line from stdin:
//   {"herald":URL,"token":TOKEN,"topic":TOPIC} (herald's origin, a token
//   that may publish and subscribe to TOPIC);
//   {"check":NAME,"origin":"listed"|"other",…what the page saw…} for each
//   check, in order; page C's also carry "network": what its requests did
//   as the browser saw them (class Net);
//   {"done":true} at the end.
// Every wait is bounded (LIMIT_MS in the page, NET_LIMIT_MS for the
// browser's account): a check that times out says so in its report. Exits
// non-zero, with the reason on stderr, after 60 s without finishing, or if
// the browser or a page fails.

import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [executablePath] = process.argv.slice(2);
if (!executablePath) {
  process.stderr.write("usage: node cors.mjs CHROMIUM\n");
  process.exit(2);
}

const WATCHDOG_MS = 60_000;
// How long the browser may take to report what a page's request did.
const NET_LIMIT_MS = 5_000;
let browser = null;
const servers = [];
const fail = async (why) => {
  process.stderr.write(`cors.mjs: ${why}\n`);
  await browser?.close().catch(() => {});
  for (const s of servers) s.close();
  process.exit(1);
};
const watchdog = setTimeout(
  () => fail(`not done after ${WATCHDOG_MS / 1000} s`),
  WATCHDOG_MS,
);

// The page both origins serve: the helpers every check uses. Each resolves
// with what happened, never rejects, and gives up after LIMIT_MS.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>another origin</title>
<script>
const LIMIT_MS = 5000;

// Runs then() (if given) once the source is open, and resolves with the
// first message and what then() returned; without then(), resolves when
// the browser gives up on the source for good (or at the limit).
function eventSource(url, init, then) {
  return new Promise((resolve) => {
    const out = { opened: false, errors: 0, message: null };
    const es = new EventSource(url, init);
    const finish = () => {
      clearTimeout(timer);
      out.readyState = es.readyState;
      es.close();
      resolve(out);
    };
    const timer = setTimeout(() => { out.timedOut = true; finish(); }, LIMIT_MS);
    const check = () => {
      if (out.message && (!then || "then" in out)) finish();
    };
    es.onopen = () => {
      out.opened = true;
      if (then) {
        then().then(
          (r) => { out.then = r; check(); },
          (e) => { out.then = { error: String(e) }; finish(); },
        );
      }
    };
    es.onmessage = (e) => {
      out.message = { data: e.data, lastEventId: e.lastEventId };
      check();
    };
    es.onerror = () => {
      out.errors += 1;
      if (es.readyState === EventSource.CLOSED) finish();
    };
  });
}

// The same for a WebSocket: its first message, or how it closed.
function webSocket(url, then) {
  return new Promise((resolve) => {
    const out = { opened: false, message: null, closed: null };
    const ws = new WebSocket(url);
    const finish = () => {
      clearTimeout(timer);
      ws.onclose = null;
      ws.close();
      resolve(out);
    };
    const timer = setTimeout(() => { out.timedOut = true; finish(); }, LIMIT_MS);
    const check = () => {
      if (out.message && (!then || "then" in out)) finish();
    };
    ws.onopen = () => {
      out.opened = true;
      if (then) {
        then().then(
          (r) => { out.then = r; check(); },
          (e) => { out.then = { error: String(e) }; finish(); },
        );
      }
    };
    ws.onmessage = (e) => {
      out.message = JSON.parse(e.data);
      check();
    };
    ws.onclose = (e) => {
      out.closed = { code: e.code, wasClean: e.wasClean };
      finish();
    };
  });
}

// fetch, reporting what the page may read of the answer, or the error the
// page was given instead.
async function send(url, init) {
  const ask = fetch(url, init);
  const limit = new Promise((_, reject) =>
    setTimeout(() => reject(new Error("timed out")), LIMIT_MS));
  try {
    const r = await Promise.race([ask, limit]);
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch {}
    return {
      ok: true,
      status: r.status,
      json,
      text,
      replayed: r.headers.get("Idempotent-Replayed"),
      cursor: r.headers.get("Herald-Cursor"),
    };
  } catch (e) {
    return { ok: false, error: String(e) };
  }
}

// A publish as a page's script makes one: JSON, with the token in
// Authorization (so the browser asks first, by a preflight).
function publish(herald, topic, token, body, key) {
  const headers = {
    Authorization: "Bearer " + token,
    "Content-Type": "application/json",
  };
  if (key) headers["Idempotency-Key"] = key;
  return send(herald + "/topics/" + topic, { method: "POST", headers, body });
}
</script>
`;

// Serves PAGE on an ephemeral port of 127.0.0.1; its origin.
async function serve() {
  const server = createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      res.end(PAGE);
    } else {
      res.writeHead(404).end();
    }
  });
  servers.push(server);
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return `http://127.0.0.1:${server.address().port}`;
}

// Page C's requests to herald, by DevTools' id: for each, its method,
// type, whether it carried the herald_token cookie, the status it was
// answered (if it was sent) and the CORS error the page was given. A
// WebSocket, its Origin and how it ended.
class Net {
  constructor(herald, cdp) {
    this.herald = herald;
    this.wsHerald = herald.replace(/^http/, "ws");
    this.cdp = cdp;
    this.byId = new Map();
    this.wakers = [];
  }

  async start() {
    const on = (event, f) =>
      this.cdp.on(event, (p) => {
        f(p);
        for (const wake of this.wakers) wake();
      });
    const record = (id) => {
      if (!this.byId.has(id)) this.byId.set(id, { id });
      return this.byId.get(id);
    };
    on("Network.requestWillBeSent", (p) => {
      if (!p.request.url.startsWith(this.herald)) return;
      Object.assign(record(p.requestId), {
        url: p.request.url,
        method: p.request.method,
        type: p.type,
      });
    });
    on("Network.requestWillBeSentExtraInfo", (p) => {
      const cookie = p.headers.Cookie ?? p.headers.cookie ?? "";
      Object.assign(record(p.requestId), {
        origin: p.headers.Origin ?? p.headers.origin ?? null,
        cookie: /(^|;\s*)herald_token=/.test(cookie),
      });
    });
    on("Network.responseReceivedExtraInfo", (p) => {
      record(p.requestId).status = p.statusCode;
    });
    on("Network.responseReceived", (p) => {
      record(p.requestId).type = p.type;
    });
    on("Network.loadingFinished", (p) => {
      record(p.requestId).ended = "finished";
    });
    on("Network.loadingFailed", (p) => {
      Object.assign(record(p.requestId), {
        ended: p.errorText,
        corsError: p.corsErrorStatus?.corsError ?? null,
      });
    });
    on("Network.webSocketCreated", (p) => {
      if (!p.url.startsWith(this.wsHerald)) return;
      Object.assign(record(p.requestId), { url: p.url, type: "WebSocket" });
    });
    // The handshake's headers as DevTools gets them lack the cookies the
    // browser adds (it does send them: page A's WebSocket with only the
    // cookie is served), so a WebSocket's record says nothing of them.
    on("Network.webSocketWillSendHandshakeRequest", (p) => {
      record(p.requestId).origin =
        p.request.headers.Origin ?? p.request.headers.origin ?? null;
    });
    on("Network.webSocketHandshakeResponseReceived", (p) => {
      record(p.requestId).status = p.response.status;
    });
    on("Network.webSocketFrameError", (p) => {
      record(p.requestId).ended = p.errorMessage;
    });
    on("Network.webSocketClosed", (p) => {
      record(p.requestId).ended ??= "closed";
    });
    await this.cdp.send("Network.enable");
  }

  reset() {
    this.byId.clear();
  }

  // Requests to herald only (the url is known once it was sent).
  requests() {
    return [...this.byId.values()].filter((r) => r.url);
  }

  // Whether everything the browser will say of a request has been said: a
  // preflight once answered; a WebSocket once it failed or closed; any
  // other once it ended and, unless a failed preflight kept it from being
  // sent, once its status and its headers are known.
  complete(r) {
    if (r.type === "WebSocket") return r.ended !== undefined && r.origin !== undefined;
    if (r.method === "OPTIONS") return r.status !== undefined;
    if (r.ended === undefined) return false;
    if (r.corsError?.startsWith("Preflight")) return true;
    return r.status !== undefined && r.cookie !== undefined;
  }

  // The requests of the check just run, once complete (or after LIMIT_MS,
  // marked unsettled).
  async settled() {
    const done = () => {
      const rs = this.requests();
      return rs.length > 0 && rs.every((r) => this.complete(r));
    };
    const ok = await new Promise((resolve) => {
      const finish = (v) => {
        clearTimeout(timer);
        this.wakers = this.wakers.filter((w) => w !== wake);
        resolve(v);
      };
      const wake = () => done() && finish(true);
      const timer = setTimeout(() => finish(false), NET_LIMIT_MS);
      this.wakers.push(wake);
      wake();
    });
    const requests = this.requests().map(({ id, ...r }) => r);
    return ok ? requests : { unsettled: requests };
  }
}

const say = (v) =>
  new Promise((resolve) => process.stdout.write(JSON.stringify(v) + "\n", resolve));

try {
  const launched = chromium.launch({ executablePath, headless: true });
  const listed = await serve();
  const other = await serve();
  await say({ origins: { listed, other } });
  const lines = createInterface({ input: process.stdin });
  const first = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    lines.once("close", () => reject(new Error("stdin closed before the settings")));
  });
  lines.close();
  const { herald, token, topic } = JSON.parse(first);
  const wsHerald = herald.replace(/^http/, "ws");
  browser = await launched;
  const context = await browser.newContext();
  const pageA = await context.newPage();
  await pageA.goto(`${listed}/`);
  const pageC = await context.newPage();
  await pageC.goto(`${other}/`);
  // What page C's requests to herald did on the network, as the browser
  // saw it (DevTools' view): the statuses, CORS errors and cookies its
  // script is not allowed to see. Reset before each of its checks.
  const net = new Net(herald, await context.newCDPSession(pageC));
  await net.start();
  const args = { herald, wsHerald, token, topic };
  const check = async (name, page, fn) => {
    if (page === pageC) net.reset();
    const result = await page.evaluate(fn, args);
    if (page === pageA) {
      await say({ check: name, origin: "listed", ...result });
    } else {
      const network = await net.settled();
      await say({ check: name, origin: "other", ...result, network });
    }
  };

  // Without the cookie: the token in the URL (EventSource, WebSocket) and
  // in Authorization (fetch).
  await check("es_token", pageA, ({ herald, token, topic }) =>
    eventSource(`${herald}/topics/${topic}?access_token=${token}`, {}, async () => {
      const first = await publish(herald, topic, token, '{"a":1}', "once");
      const retry = await publish(herald, topic, token, '{"a":1}', "once");
      return { first, retry };
    }),
  );
  await check("long_poll", pageA, ({ herald, token, topic }) =>
    send(`${herald}/topics/${topic}?transport=long-poll&timeout=1&last-event-id=now`, {
      headers: { Authorization: "Bearer " + token },
    }),
  );
  await check("ws_token", pageA, ({ wsHerald, herald, token, topic }) =>
    webSocket(`${wsHerald}/topics/${topic}?access_token=${token}`, () =>
      publish(herald, topic, token, '"by the page, for its WebSocket"'),
    ),
  );
  await check("post_bearer", pageC, ({ herald, token, topic }) =>
    publish(herald, topic, token, '"from C, with Authorization"'),
  );
  await check("ws_token", pageC, ({ wsHerald, token, topic }) =>
    webSocket(`${wsHerald}/topics/${topic}?access_token=${token}`),
  );

  // With the cookie, which the browser now sends to every port of
  // 127.0.0.1 whichever page asks.
  await context.addCookies([
    { name: "herald_token", value: token, domain: "127.0.0.1", path: "/" },
  ]);
  await check("es_cookie", pageA, ({ herald, token, topic }) =>
    eventSource(`${herald}/topics/${topic}`, { withCredentials: true }, () =>
      publish(herald, topic, token, '"for the cookie\'s EventSource"'),
    ),
  );
  await check("ws_cookie", pageA, ({ wsHerald, herald, token, topic }) =>
    webSocket(`${wsHerald}/topics/${topic}`, () =>
      publish(herald, topic, token, '"for the cookie\'s WebSocket"'),
    ),
  );
  await check("post_cookie", pageA, ({ herald, topic }) =>
    send(`${herald}/topics/${topic}`, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "text/plain" },
      body: "from A, with the cookie",
    }),
  );
  await check("post_cookie", pageC, ({ herald, topic }) =>
    send(`${herald}/topics/${topic}`, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "text/plain" },
      body: "from C, with the cookie",
    }),
  );
  await check("es_cookie", pageC, ({ herald, topic }) =>
    eventSource(`${herald}/topics/${topic}`, { withCredentials: true }),
  );
  await check("ws_cookie", pageC, ({ wsHerald, topic }) =>
    webSocket(`${wsHerald}/topics/${topic}`),
  );

  clearTimeout(watchdog);
  await browser.close();
  for (const s of servers) s.close();
  await say({ done: true });
  process.exit(0);
} catch (e) {
  await fail(e.stack ?? e);
}
