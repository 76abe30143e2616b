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
