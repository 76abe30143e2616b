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
