// herald's dashboard: plain JavaScript, no framework, nothing fetched but
// herald's own API. Every value that came from the server is put on the page
// with textContent, never as HTML, so event data cannot inject markup.
"use strict";

const REFRESH_MS = 3000; // overview and task list
const TAIL_MAX = 500; // rows kept in the events tail
const SEEN_MAX = 2000; // ids remembered per stream to drop a repeat
const NAME = /^[A-Za-z0-9._~:-]{1,128}$/; // topics, queues, event types
const TOKEN_KEY = "herald.token";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- the API

/** The token of this tab, kept in sessionStorage (gone when the tab is). */
const auth = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  /** Callbacks waiting for a token after a 401, run once one is given. */
  waiting: [],
  /** The form was cancelled: a 401 no longer opens it (the Token button does). */
  declined: false,
};

/** Thrown for an answer that is not 2xx; `status` 0 when unreachable. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * One call to herald, with the token as a Bearer header. A 401 opens the
 * token form (and still throws, so the caller can try again later).
 */
async function api(method, path, { body, type, signal } = {}) {
  const headers = {};
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
  if (type) headers["Content-Type"] = type;
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", "the server cannot be reached");
  }
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401 && !auth.declined) {
    askForToken(auth.token ? `The token was refused: ${error.message}` : "");
  }
  throw error;
}

/** herald's error JSON `{"error":{"code","message"}}` as an ApiError. */
async function errorOf(response) {
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    code = body.error.code || code;
    message = body.error.message || message;
  } catch {
    // Not herald's JSON (a proxy's page, say): the status line says enough.
  }
  return new ApiError(response.status, code, message);
}

/**
 * A WebSocket URL for `path` on this server. Browsers cannot set headers on
 * a WebSocket, so the token goes in `access_token`, which herald reads on
 * every route.
 */
function socketUrl(path, params) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  if (auth.token) url.searchParams.set("access_token", auth.token);
  return url.href;
}

const topicPath = (topic) => "/topics/" + encodeURIComponent(topic);

// --------------------------------------------------------------- the token

/** Opens the token form (once, however many calls were refused). */
function askForToken(why) {
  const dialog = $("token-dialog");
  if (why) $("token-why").textContent = why;
  $("token-input").value = auth.token;
  if (!dialog.open) dialog.showModal();
}

/** Runs `fn` once a token has been given. */
function afterToken(fn) {
  auth.waiting.push(fn);
}

function setToken(token) {
  auth.token = token.trim();
  auth.declined = false;
  if (auth.token) sessionStorage.setItem(TOKEN_KEY, auth.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("auth-state").textContent = auth.token ? "token set" : "no token";
  // Streams opened with the old token must be opened again with this one.
  for (const follow of follows.values()) follow.reconnectNow();
  const waiting = auth.waiting.splice(0);
  for (const fn of waiting) fn();
  refreshNow();
}

function wireTokenForm() {
  const dialog = $("token-dialog");
  $("token-open").addEventListener("click", () => askForToken(""));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    dialog.close();
    setToken($("token-input").value);
  });
  $("token-clear").addEventListener("click", () => {
    dialog.close();
    setToken("");
  });
  // Escape closes the form as Cancel does.
  dialog.addEventListener("cancel", () => {
    auth.declined = true;
  });
  $("token-cancel").addEventListener("click", () => {
    auth.declined = true;
    dialog.close();
  });
  $("auth-state").textContent = auth.token ? "token set" : "no token";
}

// ---------------------------------------------------------------- overview

/** What the last refresh saw of each topic, for the publish rate. */
const lastSeen = new Map(); // topic -> { events, lastId, at }
const overview = { timer: 0, inFlight: false };

/**
 * Refreshes topics, queues and the task list, then schedules the next one.
 * A refresh starts only when the previous one has ended, so a slow server
 * never gets a pile of requests; none run while the tab is hidden.
 */
async function refresh() {
  clearTimeout(overview.timer);
  if (document.hidden || overview.inFlight) return;
  overview.inFlight = true;
  const at = performance.now();
  try {
    await Promise.all([refreshTopics(at), refreshQueues(), refreshTasks(), refreshHealth()]);
  } finally {
    overview.inFlight = false;
    if (!document.hidden) overview.timer = setTimeout(refresh, REFRESH_MS);
  }
}

/** An immediate refresh (after a publish, an enqueue or a new token). */
function refreshNow() {
  if (!overview.inFlight) refresh();
}

async function refreshHealth() {
  const health = $("health");
  try {
    await api("GET", "/healthz");
    health.textContent = "up";
    health.className = "ok";
  } catch (e) {
    health.textContent = e.status === 0 ? "unreachable" : "store unavailable";
    health.className = "bad";
  }
}

/** Shows `error` in a panel's note, or hides the note. */
function panelError(id, error) {
  const note = $(id);
  note.hidden = !error;
  if (!error) return;
  note.textContent =
    error.status === 403
      ? "Your token may not list these (it needs the admin scope)."
      : error.status === 401
        ? "A token is needed to list these."
        : `Cannot list these: ${error.message}`;
}

async function refreshTopics(at) {
  let topics;
  try {
    topics = (await (await api("GET", "/topics?limit=200")).json()).topics;
    panelError("topics-error", null);
  } catch (e) {
    panelError("topics-error", e);
    return;
  }
  // Each task has a topic of its own (`tasks.ID`, its progress events):
  // hidden unless asked for, or they would crowd out the others.
  const withTasks = $("show-task-topics").checked;
  const shown = topics.filter((t) => withTasks || !t.topic.startsWith("tasks."));
  const rows = shown.map((t) => topicRow(t, rateOf(t, at)));
  $("topics").tBodies[0].replaceChildren(...rows);
  $("topics-empty").hidden = shown.length > 0;
  const hidden = topics.length - shown.length;
  $("topics-note").textContent =
    (topics.length === 200 ? "first 200" : "") + (hidden ? ` ${hidden} task topic${hidden === 1 ? "" : "s"} hidden` : "");
}

/**
 * New events per second since the last refresh, from the change in the
 * number of retained events. A topic at its retention cap keeps the same
 * count while its last id moves: then the rate is unknown ("busy").
 */
function rateOf(topic, at) {
  const before = lastSeen.get(topic.topic);
  lastSeen.set(topic.topic, { events: topic.events, lastId: topic.last_id, at });
  if (!before) return "…";
  const seconds = (at - before.at) / 1000;
  const added = topic.events - before.events;
  if (added > 0 && seconds > 0) return (added / seconds).toFixed(1) + "/s";
  return topic.last_id === before.lastId ? "0/s" : "busy";
}

function topicRow(t, rate) {
  const name = cell("", linkish(t.topic, `Follow ${t.topic}`, () => follow(t.topic, "now")));
  if (follows.has(t.topic)) name.classList.add("followed");
  const last = cell("", clock(t.last_time));
  last.title = t.last_time;
  return row(name, cell("num", t.events), cell("num", t.subscribers), cell("num", rate), last);
}

async function refreshQueues() {
  let queues;
  try {
    queues = (await (await api("GET", "/queues")).json()).queues;
    panelError("queues-error", null);
  } catch (e) {
    panelError("queues-error", e);
    return;
  }
  const rows = queues.map((q) => {
    const name = cell("", linkish(q.queue, `Show the tasks of ${q.queue}`, () => showQueue(q.queue)));
    const oldest = cell("num", q.oldest_queued_ms == null ? "—" : age(q.oldest_queued_ms));
    // A task waiting over a minute usually means no worker is running.
    if (q.oldest_queued_ms > 60_000) oldest.classList.add("wait-long");
    const counts = ["queued", "running", "succeeded", "failed", "cancelled"].map((s) => cell("num", q[s]));
    return row(name, ...counts, oldest);
  });
  $("queues").tBodies[0].replaceChildren(...rows);
  $("queues-empty").hidden = queues.length > 0;
}

// ------------------------------------------------------- little DOM helpers

function cell(className, content) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = String(content);
  return td;
}

function row(...cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

/** A button that looks like a link (it acts on this page, goes nowhere). */
function linkish(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "linkish";
  b.textContent = text;
  b.title = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** `HH:MM:SS.mmm` local time of an RFC 3339 time. */
function clock(rfc3339) {
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A duration in ms, short: `850 ms`, `12 s`, `3 min`, `2 h`. */
function age(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3_600_000)} h`;
}

/** Shows the outcome of a form's call next to its button. */
function say(id, text, bad = false) {
  const out = $(id);
  out.textContent = text;
  out.classList.toggle("bad", bad);
}

// ---------------------------------------------------------- following topics

/** Followed topics; each has a WebSocket of its own. */
const follows = new Map();

/**
 * One followed topic on a WebSocket of its own. One socket per topic (not
 * one `/subscribe?topic=a&topic=b`) keeps each cursor a plain event id and
 * lets a topic be added or dropped without touching the others; browsers
 * do not count WebSockets against HTTP's six connections per server.
 *
 * The cursor is the id of the last event shown. It starts as a concrete
 * position: "now" is asked of a short poll (its Herald-Cursor header)
 * before the socket opens, so an event published while the socket is
 * connecting is not missed, and a drop before the first event resumes from
 * there too. Every reconnect sends the cursor as `last-event-id`; the
 * server replays what came after it, or says `gap` if it is no longer
 * retained.
 */
class Follow {
  constructor(topic, from) {
    this.topic = topic;
    this.from = from;
    this.cursor = null;
    this.seen = new Set();
    this.socket = null;
    this.delay = 250;
    this.timer = 0;
    this.stopped = false;
    this.chip = followChip(this);
  }

  setState(state, title) {
    this.chip.dataset.state = state;
    this.chip.querySelector(".state").textContent = state;
    this.chip.title = title || "";
  }

  /** Resolves the starting cursor (retrying while unreachable), then connects. */
  async start() {
    this.setState("connecting");
    if (this.from === "all") this.cursor = "all";
    while (this.cursor === null && !this.stopped) {
      try {
        const r = await api("GET", `${topicPath(this.topic)}?transport=poll&last-event-id=now`);
        this.cursor = r.headers.get("Herald-Cursor") || "now";
      } catch (e) {
        if (e.status === 401) return afterToken(() => this.start());
        if (e.status === 403) return this.setState("refused", e.message);
        await pause(this.nextDelay());
      }
    }
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    // Never two sockets for one topic (a new token may come mid-retry).
    const old = this.socket;
    this.socket = null;
    if (old) old.close();
    const url = socketUrl(topicPath(this.topic), { "last-event-id": this.cursor });
    const socket = new WebSocket(url);
    this.socket = socket;
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
      // How many times this topic's stream opened: a reconnect shows here.
      this.chip.dataset.opens = String(Number(this.chip.dataset.opens || 0) + 1);
      this.delay = 250;
      this.setState("live");
    });
    socket.addEventListener("message", (m) => this.receive(m.data));
    socket.addEventListener("close", (c) => {
      if (socket !== this.socket || this.stopped) return;
      this.socket = null;
      this.dropped(c.code, opened);
    });
  }

  receive(text) {
    let e;
    try {
      e = JSON.parse(text);
    } catch {
      return;
    }
    // A gap has no id and must not move the cursor.
    if (e.event === "gap") return showGap(this.topic, e.data);
    if (!e.id || this.seen.has(e.id)) return;
    this.remember(e.id);
    this.cursor = e.id;
    showEvent(e);
  }

  remember(id) {
    this.seen.add(id);
    if (this.seen.size > SEEN_MAX) this.seen = new Set([...this.seen].slice(-SEEN_MAX / 2));
  }

  /**
   * The socket closed. A browser does not say why a WebSocket handshake
   * failed, so before trying again a short poll from the cursor asks: a 401
   * opens the token form, a 403 stops here, no answer waits longer.
   */
  async dropped(code, opened) {
    this.setState("reconnecting", opened ? `closed (${code})` : "could not connect");
    if (code === 4401) askForToken("The token expired: give a fresh one to go on.");
    this.timer = setTimeout(() => this.retry(), this.nextDelay());
  }

  async retry() {
    if (this.stopped) return;
    try {
      const q = new URLSearchParams({ transport: "poll", "last-event-id": this.cursor, limit: "1" });
      await api("GET", `${topicPath(this.topic)}?${q}`);
    } catch (e) {
      if (e.status === 401) return afterToken(() => this.retry());
      if (e.status === 403) return this.setState("refused", e.message);
      if (e.status === 0 || e.status >= 500) {
        this.timer = setTimeout(() => this.retry(), this.nextDelay());
        return;
      }
    }
    this.connect();
  }

  /** Backoff between attempts: 250 ms doubling to 5 s. */
  nextDelay() {
    const d = this.delay;
    this.delay = Math.min(this.delay * 2, 5000);
    return d;
  }

  /** Drops the socket and opens a new one at once (a new token). */
  reconnectNow() {
    if (this.stopped || this.cursor === null) return;
    this.delay = 250;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
    this.chip.remove();
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function followChip(f) {
  const li = document.createElement("li");
  li.className = "chip";
  li.dataset.topic = f.topic;
  const name = document.createElement("strong");
  name.textContent = f.topic;
  const state = document.createElement("span");
  state.className = "state";
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "×";
  close.setAttribute("aria-label", `Stop following ${f.topic}`);
  close.addEventListener("click", () => unfollow(f.topic));
  li.append(name, state, close);
  $("follows").append(li);
  return li;
}

function follow(topic, from) {
  if (follows.has(topic)) return;
  const f = new Follow(topic, from);
  follows.set(topic, f);
  $("publish-topic").value = topic;
  f.start();
}

function unfollow(topic) {
  const f = follows.get(topic);
  if (!f) return;
  f.stop();
  follows.delete(topic);
}

/** Adds an event at the top of the tail, trimming the oldest rows. */
function showEvent(e) {
  const li = $("event-row").content.firstElementChild.cloneNode(true);
  li.dataset.topic = e.topic;
  li.dataset.id = e.id;
  li.dataset.type = e.event;
  const time = li.querySelector("time");
  time.textContent = clock(e.time);
  time.dateTime = e.time;
  li.querySelector(".topic").textContent = e.topic;
  const type = li.querySelector(".type");
  type.textContent = e.event;
  type.dataset.type = e.event;
  li.querySelector(".id").textContent = e.id;
  li.querySelector(".data").textContent = e.data;
  prepend(li);
}

/** Tells that history of `topic` was missed: the server replays from its oldest event. */
function showGap(topic, data) {
  let cursor = "";
  try {
    cursor = JSON.parse(data).cursor;
  } catch {
    // The notice is what matters; the cursor only explains it.
  }
  const li = document.createElement("li");
  li.className = "gap";
  li.dataset.topic = topic;
  li.textContent = `Events of ${topic} were missed: the cursor ${cursor} is older than what the server keeps; resuming from the oldest retained event.`;
  prepend(li);
}

function prepend(li) {
  const tail = $("tail");
  tail.prepend(li);
  while (tail.children.length > TAIL_MAX) tail.lastElementChild.remove();
  $("tail-empty").hidden = true;
}

function wireFollowForm() {
  $("follow").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("follow-topic");
    const topic = input.value.trim();
    if (!NAME.test(topic)) {
      input.setCustomValidity("1–128 of A–Z a–z 0–9 . _ - ~ :");
      input.reportValidity();
      return;
    }
    input.setCustomValidity("");
    follow(topic, $("follow-from").value);
  });
  $("follow-topic").addEventListener("input", (e) => e.target.setCustomValidity(""));
}

// ------------------------------------------------------------------ publish

function wirePublishForm() {
  $("publish").addEventListener("submit", async (e) => {
    e.preventDefault();
    const topic = $("publish-topic").value.trim();
    const type = $("publish-event").value.trim() || "message";
    if (!NAME.test(topic)) return say("publish-result", "The topic must be 1–128 of A–Z a–z 0–9 . _ - ~ :", true);
    if (!NAME.test(type)) return say("publish-result", "The event type must be 1–128 of A–Z a–z 0–9 . _ - ~ :", true);
    const query = type === "message" ? "" : `?event=${encodeURIComponent(type)}`;
    try {
      const r = await api("POST", topicPath(topic) + query, {
        body: $("publish-data").value,
        type: "text/plain; charset=utf-8",
      });
      const sent = await r.json();
      say("publish-result", `Published ${sent.event} to ${sent.topic} as ${sent.id}`);
      refreshNow();
    } catch (err) {
      say("publish-result", `Not published: ${err.message}`, true);
    }
  });
}

// -------------------------------------------------------------------- tasks

/** The queue whose tasks are shown, and the tasks shown (id -> state). */
const taskView = { queue: "jobs", tasks: new Map() };
const TASKS_KEPT = 20; // finished tasks kept in view

/** Shows the tasks of `queue`, forgetting those of the previous one. */
function showQueue(queue) {
  if (queue !== taskView.queue) {
    for (const t of taskView.tasks.values()) closeTaskSocket(t);
    taskView.tasks.clear();
    $("tasks").replaceChildren();
  }
  taskView.queue = queue;
  $("tasks-queue").textContent = queue;
  $("enqueue-queue").value = queue;
  refreshNow();
}

/**
 * Lists the queue's running and queued tasks; tasks already shown stay
 * (finished ones keep their result). Running and queued tasks are also
 * followed live, so a bar moves as the worker reports progress.
 */
async function refreshTasks() {
  const queue = taskView.queue;
  const base = `/queues/${encodeURIComponent(queue)}/tasks?limit=50&status=`;
  let found;
  try {
    const [running, queued] = await Promise.all(
      ["running", "queued"].map(async (s) => (await (await api("GET", base + s)).json()).tasks),
    );
    found = [...running, ...queued];
    panelError("tasks-error", null);
  } catch (e) {
    panelError("tasks-error", e);
    found = [];
  }
  if (queue !== taskView.queue) return;
  for (const task of found) upsertTask(task);
  // A task shown as unfinished but no longer listed has finished: ask it.
  const listed = new Set(found.map((t) => t.id));
  for (const t of taskView.tasks.values()) {
    if (!listed.has(t.task.id) && !finished(t.task) && !t.socket) fetchTask(t.task.id);
  }
}

async function fetchTask(id) {
  try {
    upsertTask(await (await api("GET", `/tasks/${encodeURIComponent(id)}`)).json());
  } catch {
    // Tried again at the next refresh.
  }
}

const finished = (task) => ["succeeded", "failed", "cancelled"].includes(task.status);

/** Adds or updates a task's row; follows it live while it is unfinished. */
function upsertTask(task) {
  if (task.queue !== taskView.queue) return;
  let t = taskView.tasks.get(task.id);
  if (!t) {
    t = { task, socket: null, li: $("task-row").content.firstElementChild.cloneNode(true) };
    taskView.tasks.set(task.id, t);
    $("tasks").prepend(t.li);
    trimTasks();
  } else if (finished(t.task) && !finished(task)) {
    return; // an older answer arriving late
  } else {
    t.task = { ...t.task, ...task };
  }
  renderTask(t);
  if (!finished(t.task) && !t.socket) followTask(t);
  $("tasks-empty").hidden = taskView.tasks.size > 0;
}

/** Keeps every unfinished task and the newest finished ones. */
function trimTasks() {
  const done = [...taskView.tasks.values()].filter((t) => finished(t.task));
  for (const t of done.slice(0, Math.max(0, done.length - TASKS_KEPT))) {
    t.li.remove();
    taskView.tasks.delete(t.task.id);
  }
}

/**
 * Follows `/tasks/{id}/events` on a WebSocket: `wait` (position), `progress`,
 * then `done` or `error` with the whole task, and the server closes. If it
 * closes early, the next refresh asks for the task and follows it again.
 */
function followTask(t) {
  const socket = new WebSocket(socketUrl(`/tasks/${encodeURIComponent(t.task.id)}/events`, {}));
  t.socket = socket;
  socket.addEventListener("message", (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
      e.data = JSON.parse(e.data);
    } catch {
      return;
    }
    if (e.event === "wait") t.task = { ...t.task, status: "queued", position: e.data.position };
    else if (e.event === "progress") t.task = { ...t.task, status: "running", ...e.data };
    else if (e.event === "done" || e.event === "error") t.task = { ...t.task, ...e.data };
    renderTask(t);
  });
  socket.addEventListener("close", () => {
    if (t.socket === socket) t.socket = null;
  });
}

function closeTaskSocket(t) {
  if (t.socket) t.socket.close();
  t.socket = null;
}

function renderTask({ task, li }) {
  li.dataset.id = task.id;
  li.dataset.status = task.status;
  const id = li.querySelector(".id");
  id.textContent = task.id.slice(0, 8);
  id.title = task.id;
  li.querySelector(".status").textContent = task.status;
  li.querySelector(".position").textContent =
    task.status === "queued" && task.position ? `#${task.position} in line` : attemptsOf(task);
  // A succeeded task is complete whatever its last report said.
  const fraction = task.status === "succeeded" ? 1 : task.progress;
  const percent = fraction == null ? 0 : Math.round(fraction * 100);
  const bar = li.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-label", `Progress of task ${task.id}`);
  bar.firstElementChild.style.width = `${percent}%`;
  li.querySelector(".message").textContent =
    (fraction == null ? "" : `${percent} %`) + (task.message ? ` · ${task.message}` : "");
  const outcome = li.querySelector(".outcome");
  const text = task.status === "succeeded" ? show(task.result) : task.status === "failed" ? task.error : "";
  outcome.hidden = !text;
  outcome.textContent = text || "";
}

function attemptsOf(task) {
  return task.attempts > 1 ? `attempt ${task.attempts} of ${task.max_attempts}` : "";
}

/** A result as the person sent it: text as is, JSON pretty-printed. */
function show(value) {
  if (value == null) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function wireEnqueueForm() {
  $("enqueue").addEventListener("submit", async (e) => {
    e.preventDefault();
    const queue = $("enqueue-queue").value.trim();
    const payload = $("enqueue-payload").value;
    const json = $("enqueue-kind").value === "json";
    if (!NAME.test(queue)) return say("enqueue-result", "The queue must be 1–128 of A–Z a–z 0–9 . _ - ~ :", true);
    if (json) {
      try {
        JSON.parse(payload);
      } catch (err) {
        return say("enqueue-result", `Not JSON: ${err.message}`, true);
      }
    }
    try {
      const r = await api("POST", `/queues/${encodeURIComponent(queue)}/tasks`, {
        body: payload,
        type: json ? "application/json" : "text/plain; charset=utf-8",
      });
      const task = await r.json();
      say("enqueue-result", `Enqueued ${task.id}`);
      if (queue !== taskView.queue) showQueue(queue);
      upsertTask(task);
    } catch (err) {
      say("enqueue-result", `Not enqueued: ${err.message}`, true);
    }
  });
}

// ------------------------------------------------------------------ start

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshNow();
});

$("show-task-topics").addEventListener("change", refreshNow);
wireTokenForm();
wireFollowForm();
wirePublishForm();
wireEnqueueForm();
refresh();
