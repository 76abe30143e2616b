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
