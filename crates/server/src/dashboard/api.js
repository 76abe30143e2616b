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
