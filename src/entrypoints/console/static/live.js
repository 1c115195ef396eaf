// Live updates: GET /api/v1/events/stream/ read with fetch(), because the token
// goes in a header and EventSource cannot send one. A lost connection is shown,
// retried with Last-Event-ID (nothing is missed), and meanwhile screens poll.
// The state is "connecting" until the stream first answers, then "up", or
// "lost" after a loss (also while reconnecting), until stop().

import {endSession, renewAccess, session} from "./api.js";

const STREAM = "/api/v1/events/stream/";
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 15000;
const SILENCE_MS = 45000; // the service comments every 15 s: three missed means a dead line

const listeners = new Set();
const watchers = new Set();
let running = false;
let state = "connecting";
let lastEventId = null;
let controller = null;
let retryTimer = null;

export const live = {
  get connected() { return state === "up"; },
  /** "connecting", "up" or "lost". */
  get state() { return state; },
  /** fn(message) for every message: {id, type, data}. */
  subscribe(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
  /** fn(connected) whenever the state changes. */
  watch(fn) {
    watchers.add(fn);
    return () => watchers.delete(fn);
  },
  start() {
    if (running) return;
    running = true;
    connect(FIRST_RETRY_MS);
  },
  stop() {
    running = false;
    lastEventId = null;
    clearTimeout(retryTimer);
    controller?.abort();
    setState("connecting");
  },
};

/** The migration a message is about, when it says. */
export function migrationOf(message) {
  const data = message.data;
  if (!data || typeof data !== "object") return null;
  const id = data.migration ?? data.migration_id;
  return typeof id === "number" ? id : null;
}

function setState(value) {
  if (state === value) return;
  state = value;
  for (const fn of watchers) fn(value === "up");
}

function later(delay) {
  if (!running) return;
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => connect(Math.min(delay * 2, LAST_RETRY_MS)), delay);
}

async function connect(nextDelay, renewed = false) {
  if (!running) return;
  controller = new AbortController();
  const mine = controller;
  const headers = {Accept: "text/event-stream", Authorization: `Bearer ${session.access}`};
  if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
  try {
    const response = await fetch(STREAM, {headers, signal: mine.signal, cache: "no-store"});
    if (response.status === 401 && !renewed) {
      // Once straight away with a renewed token; a second 401 waits like any failure.
      if (await renewAccess()) connect(nextDelay, true);
      else endSession();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
    setState("up");
    await read(response.body, mine);
    nextDelay = FIRST_RETRY_MS; // it worked for a while: start the back-off again
  } catch {
    // Lost or refused: shown below, and tried again.
  }
  if (mine !== controller || !running) return;
  // A refusal before any answer is a loss too: the sign must not wait for ever.
  setState("lost");
  later(nextDelay);
}

async function read(body, mine) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = {data: [], type: "message", id: null};
  let silence = setTimeout(() => mine.abort(), SILENCE_MS);
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      clearTimeout(silence);
      silence = setTimeout(() => mine.abort(), SILENCE_MS);
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          dispatch(message);
          message = {data: [], type: "message", id: null};
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") message.data.push(text);
          else if (field === "event") message.type = text;
          else if (field === "id") message.id = text;
        }
      }
    }
  } finally {
    clearTimeout(silence);
  }
}

function dispatch(message) {
  // An empty id forgets the last one (as EventSource does): no Last-Event-ID is sent then.
  if (message.id !== null) lastEventId = message.id || null;
  if (!message.data.length) return;
  const text = message.data.join("\n");
  let data = text;
  try {
    data = JSON.parse(text);
  } catch {
    // not JSON: passed on as text
  }
  for (const fn of listeners) fn({id: message.id, type: message.type, data});
}

/**
 * Keep a screen fresh: `refresh()` on each message that `wants`, and while the
 * stream is down, every second while `busy()` (something runs) or every five
 * otherwise. Returns the function that stops it all.
 */
export function keepFresh({refresh, wants = () => true, busy = () => false}) {
  let pending = null;
  let lastRun = 0;
  const soon = () => {
    if (pending) return;
    const wait = Math.max(0, lastRun + 500 - Date.now());
    pending = setTimeout(async () => {
      pending = null;
      lastRun = Date.now();
      try { await refresh(); } catch { /* the next message or poll tries again */ }
    }, wait);
  };
  const unsubscribe = live.subscribe((message) => { if (wants(message)) soon(); });
  const unwatch = live.watch((up) => { if (up) soon(); });
  let ticks = 0;
  const poll = setInterval(() => {
    ticks += 1;
    if (!live.connected && (busy() || ticks % 5 === 0)) soon();
  }, 1000);
  return () => {
    unsubscribe();
    unwatch();
    clearInterval(poll);
    clearTimeout(pending);
  };
}
