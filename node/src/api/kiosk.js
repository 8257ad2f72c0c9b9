/* popmesh attendee kiosk (GET /kiosk/app.js): the gallery, live availability, check-in and booking, suggestions.
 *
 * What an attendee tells this kiosk (group size, when they want to go, consent, a first name for the greeting) is
 * kept in this browser's localStorage under their pass subject and is never put in a request. The only requests
 * that carry the attendee are the check-in (the pass text) and the booking (the pass subject, which the node
 * records with the sale). Suggestion feedback carries a zone and slots only, and only when the attendee said yes.
 * Nothing is queued for later: a check-in or a booking happens while the node answers, or not at all.
 */
"use strict";

// ----- limits and names -----

const TOKEN_KEY = "popmesh.kiosk.token";
const PROGRAMME_KEY = "popmesh.kiosk.programme"; // shows and slots (labels, times); no availability numbers
const PROFILE_PREFIX = "popmesh.kiosk.profile."; // + pass subject
const VISIT_KEY = "popmesh.kiosk.visit"; // sessionStorage: the attendee at the screen now
const SITE_KEY = "popmesh.kiosk.site"; // the site's name, for the header while offline
const REQUEST_TIMEOUT_MS = 8000;
const PROBE_MS = 2000; // while offline, ask /v1/status this often
const POLL_LIVE_MS = 15000; // availability re-read while the event stream is up
const POLL_FALLBACK_MS = 4000; // ... and while it is not
const STREAM_SILENT_MS = 45000; // no byte (not even a keep-alive) for this long: the stream is dead
const SUGGEST_EVERY_MS = 60000;
const SUGGESTIONS_SHOWN = 3;
const SUGGESTIONS_ASKED = 10;
const SOON_MS = 90 * 60 * 1000;
const QUESTIONS_PER_VISIT = 2;
const VISIT_IDLE_MS = 3 * 60 * 1000; // untouched this long, the screen is ready for the next attendee
const SEATS_PER_BOOKING_MAX = 12;
const AVAILABILITY_PARALLEL = 4;

const $ = (id) => document.getElementById(id);

/** An element with text or children; `props` sets attributes (`class`, `data-*`, ...) and `on*` handlers. */
function h(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// The naming rule of show and slot ids (crdt/src/naming.rs), which a zone follows too.
function validName(s) {
  return typeof s === "string" && /^[A-Za-z0-9_\-.:]{1,64}$/.test(s) && !s.startsWith(".") && !s.includes("..");
}

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function when(ms) {
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" })} ${time}`;
}

function seatsWord(n) {
  return n === 1 ? "1 seat" : `${n} seats`;
}

const slotKey = (show, slot) => `${show}/${slot}`;

function store(area, key, value) {
  try {
    if (value === undefined) area.removeItem(key);
    else area.setItem(key, JSON.stringify(value));
  } catch {
    // A full or disabled storage: the kiosk still works, it just forgets.
  }
}

function load(area, key) {
  try {
    const v = area.getItem(key);
    return v ? JSON.parse(v) : null;
  } catch {
    return null;
  }
}

// ----- where the screen stands, and its token -----

const query = new URLSearchParams(location.search);
const zoneAsked = query.get("zone");
const zone = validName(zoneAsked) ? zoneAsked : "site";
// A screen may stand for one show (`?show=`): its slots, its suggestions, its door. Every show otherwise.
const onlyShow = validName(query.get("show")) ? query.get("show") : null;

// A pairing link carries the token in the fragment once (never sent to the node); it is kept, and dropped from
// the address bar. `#token=` with nothing forgets it.
(function takeToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (!m) return;
  const t = decodeURIComponent(m[1]).trim();
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // no storage: the token lasts for this page only
    window.__kioskToken = t;
  }
  history.replaceState(null, "", location.pathname + location.search);
})();

function token() {
  try {
    return localStorage.getItem(TOKEN_KEY) || window.__kioskToken || null;
  } catch {
    return window.__kioskToken || null;
  }
}

// ----- talking to the node -----

/** The node did not answer (no connection, a timeout, a proxy saying it is gone). */
class Offline extends Error {}

/** The node answered with an error. */
class Refused extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const hs = { accept: "application/json", ...extra };
  const t = token();
  if (t) hs.authorization = `Bearer ${t}`;
  return hs;
}

async function api(path, { method = "GET", body, timeout = REQUEST_TIMEOUT_MS } = {}) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeout);
  let r;
  try {
    r = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "content-type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal: ctrl.signal,
    });
  } catch (e) {
    throw new Offline(e.name === "AbortError" ? "the node did not answer in time" : "the node does not answer");
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  // A proxy's "bad gateway", or this kiosk's own worker saying nothing is saved: the node is not reachable.
  if (r.status === 502 || r.status === 504 || (data && data.error && data.error.code === "offline")) {
    throw new Offline("the node does not answer");
  }
  if (!r.ok) {
    const err = (data && data.error) || {};
    throw new Refused(r.status, err.code || "error", err.message || `the node answered HTTP ${r.status}`);
  }
  if (state.auth) {
    state.auth = null; // the node takes this screen again
    renderBanner();
  }
  return { status: r.status, data, fromCache: r.headers.get("x-kiosk-cache") === "hit" };
}

// ----- the contract: GET /v1/openapi.json -----

// The page calls the node by operation id. Paths come from the node's own OpenAPI document once it answered
// (these built-in ones until then, and offline); an operation the page needs and the node does not offer is
// named on the screen, so a page and a node of different releases say so instead of failing oddly.
const OPERATIONS = {
  status: "/v1/status",
  shows: "/v1/shows",
  availability: "/v1/shows/{show}/slots/{slot}",
  book: "/v1/shows/{show}/slots/{slot}/bookings",
  check_in: "/v1/check-ins",
  manifests: "/v1/manifests",
  events: "/v1/events",
  suggestions: "/v1/suggestions",
  feedback: "/v1/suggestions/feedback",
  by_hash: "/media/{hash}",
};
const contract = { paths: null, missing: [] };

async function loadContract() {
  let doc;
  try {
    ({ data: doc } = await api("/v1/openapi.json"));
  } catch {
    return; // offline, or a node without a contract: the built-in paths stand
  }
  const found = {};
  for (const [path, item] of Object.entries((doc && doc.paths) || {})) {
    for (const operation of Object.values(item || {})) {
      if (operation && typeof operation.operationId === "string") found[operation.operationId] = path;
    }
  }
  contract.paths = found;
  contract.missing = Object.keys(OPERATIONS).filter((id) => !found[id]);
  if (contract.missing.length) {
    state.auth = `This kiosk page needs what this node does not offer (${contract.missing.join(", ")}): update the node.`;
    renderBanner();
  }
}

/** The path of operation `id`, its `{parameters}` filled from `params`. */
function op(id, params = {}) {
  const template = (contract.paths && contract.paths[id]) || OPERATIONS[id];
  return template.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(String(params[k])));
}

/** Runs `fn`; an Offline failure turns the screen offline. Returns `fallback` on any failure. */
async function attempt(fn, fallback) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof Offline) wentOffline();
    else if (e instanceof Refused && (e.status === 401 || e.status === 403) && e.code !== "pass_refused") authProblem(e);
    return fallback;
  }
}

// ----- state -----

const state = {
  online: null, // null: not known yet
  auth: null, // a message when the node refuses this screen
  site: null,
  shows: {}, // show id -> { name, slots: { slot id -> { label, starts_at, capacity } } }
  avail: new Map(), // "show/slot" -> the node's availability answer, or { error }
  gallery: { key: "", items: [], fallback: null, missing: new Set(), fromCache: false },
  precache: null,
  visit: load(sessionStorage, VISIT_KEY), // { subject, show, at, booked: [...], asked, pending: {} }
  selected: null, // "show/slot" being booked
  seats: 1,
  booking: false,
  confirmation: null,
  joinError: null,
  bookError: null,
  suggestions: null, // the node's answer
  suggestionsAt: 0,
  reported: { at: -1, keys: new Set() }, // suggestions of the node's latest answer already reported as shown
  stream: null,
  streamUp: false,
  notice: null,
};

function saveVisit() {
  store(sessionStorage, VISIT_KEY, state.visit || undefined);
}

function profileOf(subject) {
  return load(localStorage, PROFILE_PREFIX + subject) || {};
}

function saveProfile(subject, profile) {
  store(localStorage, PROFILE_PREFIX + subject, { ...profile, updated: Date.now() });
}

function profile() {
  return state.visit ? profileOf(state.visit.subject) : {};
}

function groupSize() {
  const g = Number(profile().group);
  return Number.isInteger(g) && g >= 1 ? g : 1;
}

// ----- online and offline -----

let probeTimer = null;

function wentOffline() {
  if (state.online === false) return;
  state.online = false;
  // Numbers from before are not shown again: after the outage each slot waits for a fresh answer.
  state.avail = new Map();
  stopStream();
  renderAll();
  probeSoon();
}

function probeSoon() {
  clearTimeout(probeTimer);
  probeTimer = setTimeout(probe, PROBE_MS);
}

async function probe() {
  try {
    const { data } = await api(op("status"), { timeout: 1800 });
    cameBack(data);
  } catch (e) {
    if (e instanceof Refused) cameBack(null); // it answers: reachable, whatever it thinks of us
    else probeSoon();
  }
}

function cameBack(status) {
  clearTimeout(probeTimer);
  const was = state.online;
  state.online = true;
  if (status) noteStatus(status);
  if (was !== true) {
    renderAll();
    loadContract();
    reloadEverything();
    follow(false);
    if (was === false) tellWorker({ type: "refresh", reason: "online again" });
  }
}

function noteStatus(s) {
  const name = s && typeof s.site_name === "string" ? s.site_name : null;
  if (typeof name === "string" && name !== state.site) {
    state.site = name;
    $("site-name").textContent = name;
    store(localStorage, SITE_KEY, name);
  }
}

function authProblem(e) {
  if (e.status === 401 && token()) {
    // A token the node refuses (expired, revoked, mistyped) is forgotten, so a bad link cannot lock this browser
    // out of a node that needs none (its own loopback); the next pairing link brings a good one.
    try {
      localStorage.removeItem(TOKEN_KEY);
    } catch {
      // no storage
    }
    window.__kioskToken = null;
    tellWorker({ type: "config", token: null });
    state.auth = "The node refused this screen's token; it was forgotten. Ask staff for a new pairing link.";
    renderBanner();
    setTimeout(() => {
      state.auth = null;
      reloadEverything();
    }, 3000);
    return;
  }
  state.auth =
    e.status === 401
      ? "This screen needs a kiosk-screen token: ask staff to open it with its pairing link."
      : `The node refuses this screen: ${e.message}`;
  renderBanner();
}

// ----- reading the node -----

async function reloadEverything() {
  await Promise.all([loadGallery(), loadShows()]);
  await loadSuggestions();
}

async function loadShows() {
  const r = await attempt(() => api(op("shows")), null);
  if (!r) {
    if (!Object.keys(state.shows).length) state.shows = (load(localStorage, PROGRAMME_KEY) || {}).shows || {};
    renderSlots();
    return;
  }
  if (state.online !== true) cameBack(null);
  state.shows = r.data.shows || {};
  const programme = {};
  for (const [id, s] of Object.entries(state.shows)) programme[id] = { name: s.name, slots: s.slots };
  store(localStorage, PROGRAMME_KEY, { shows: programme, at: Date.now() });
  await loadAvailability(allSlots().map((s) => s.key));
}

function allSlots() {
  const out = [];
  for (const [show, s] of Object.entries(state.shows)) {
    if (onlyShow && show !== onlyShow) continue;
    for (const [slot, x] of Object.entries(s.slots || {})) {
      out.push({ key: slotKey(show, slot), show, slot, label: x.label, starts_at: x.starts_at, capacity: x.capacity, showName: s.name });
    }
  }
  out.sort((a, b) => a.starts_at - b.starts_at || a.label.localeCompare(b.label));
  return out;
}

function slotInfo(key) {
  return allSlots().find((s) => s.key === key) || null;
}

let notYetTries = 0;
const NOT_YET_TRIES_MAX = 20;

async function loadAvailability(keys) {
  const queue = [...new Set(keys)];
  let offline = false;
  async function each() {
    while (queue.length && !offline) {
      const key = queue.shift();
      const [show, slot] = key.split("/");
      try {
        const { data } = await api(op("availability", { show, slot }));
        state.avail.set(key, data);
      } catch (e) {
        if (e instanceof Offline) offline = true;
        else state.avail.set(key, { error: e.message, code: e.code, status: e.status });
      }
    }
  }
  await Promise.all(Array.from({ length: AVAILABILITY_PARALLEL }, each));
  if (offline) wentOffline();
  else if (keys.length && state.online !== true) cameBack(null);
  // A node just restarted answers 503 while it opens its documents: soon again, not at the next poll.
  const notYet = keys.filter((k) => (state.avail.get(k) || {}).status === 503);
  notYetTries = notYet.length ? notYetTries + 1 : 0;
  if (!offline && notYet.length && notYetTries <= NOT_YET_TRIES_MAX) setTimeout(() => state.online === true && loadAvailability(notYet), 1500);
  renderSlots();
  renderBooking();
  renderSuggestions();
}

async function loadGallery() {
  let r;
  try {
    r = await api(op("manifests"));
  } catch (e) {
    if (e instanceof Offline) wentOffline();
    renderGallery();
    return;
  }
  if (r.fromCache) wentOffline();
  else if (state.gallery.missing.size) {
    // Back from the node: media that failed before may load now.
    state.gallery.missing = new Set();
    state.gallery.rendered = false;
  }
  const items = [];
  const seen = new Set();
  let fallback = null;
  for (const m of r.data.manifests || []) {
    for (const e of m.entries || []) {
      const kind = String(e.mime || "").startsWith("video/") ? "video" : String(e.mime || "").startsWith("image/") ? "image" : null;
      if (!kind || seen.has(e.hash)) continue;
      seen.add(e.hash);
      const item = { name: e.name, hash: e.hash, mime: e.mime, kind, fallback: e.name === m.fallback };
      if (item.fallback && !fallback) fallback = item;
      items.push(item);
    }
  }
  const key = items.map((i) => i.hash).join(",");
  if (key !== state.gallery.key) {
    state.gallery = { key, items, fallback, missing: new Set(), fromCache: r.fromCache, rendered: false };
  }
  state.gallery.fromCache = r.fromCache;
  renderGallery();
}

async function loadSuggestions() {
  if (state.online === false) {
    renderSuggestions();
    return;
  }
  const show = onlyShow ? `&show=${encodeURIComponent(onlyShow)}` : "";
  let failed = false;
  const r = await attempt(async () => {
    try {
      return await api(`${op("suggestions")}?zone=${encodeURIComponent(zone)}&limit=${SUGGESTIONS_ASKED}${show}`);
    } catch (e) {
      failed = e instanceof Refused;
      throw e;
    }
  }, null);
  if (r) {
    state.suggestions = r.data;
    state.suggestionsAt = Date.now();
  } else if (failed && !state.suggestions) {
    state.suggestions = { suggestions: [], also_booked: [] }; // the node will not suggest: say so, not "finding"
  }
  renderSuggestions();
}

// ----- the event stream -----

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.streamUp = false;
}

let changed = { slots: new Set(), all: false, manifests: false, timer: null };

function onChange(ev) {
  const doc = String((ev && ev.doc) || "");
  const m = /^show\/([^/]+)\/slot\/([^/]+)$/.exec(doc);
  if (m) changed.slots.add(slotKey(m[1], m[2]));
  else if (doc === "directory") changed.all = true;
  else if (/^show\/[^/]+\/manifest$/.test(doc)) changed.manifests = true;
  else if (!doc) changed.all = true;
  else return; // ledgers, telemetry, access lists: availability does not move
  if (!changed.timer) changed.timer = setTimeout(flushChanges, 250);
}

function flushChanges() {
  const c = changed;
  changed = { slots: new Set(), all: false, manifests: false, timer: null };
  if (c.manifests) {
    loadGallery();
    tellWorker({ type: "refresh", reason: "manifest changed" });
  }
  if (c.all) loadShows();
  else if (c.slots.size) loadAvailability([...c.slots]);
}

/** Follows /v1/events; `reread`: the screen may have missed changes since the last stream, so read again. */
async function follow(reread) {
  if (state.stream || state.online === false) return;
  const ctrl = new AbortController();
  state.stream = ctrl;
  let silent = null;
  const alive = () => {
    clearTimeout(silent);
    silent = setTimeout(() => ctrl.abort(), STREAM_SILENT_MS);
  };
  try {
    alive();
    const r = await fetch(op("events"), { headers: headers({ accept: "text/event-stream" }), cache: "no-store", credentials: "omit", signal: ctrl.signal });
    if (!r.ok || !r.body) throw new Refused(r.status, "events", `events: HTTP ${r.status}`);
    state.streamUp = true;
    renderLive();
    if (reread) loadShows();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      alive();
      buf += value;
      let end;
      while ((end = /\r?\n\r?\n/.exec(buf))) {
        const block = buf.slice(0, end.index);
        buf = buf.slice(end.index + end[0].length);
        let event = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(":")) continue;
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
        }
        if (event === "change") {
          let parsed = null;
          try {
            parsed = JSON.parse(data.join("\n"));
          } catch {
            parsed = null;
          }
          onChange(parsed);
        } else if (event === "lagged") {
          reloadEverything();
        }
      }
    }
  } catch (e) {
    if (e instanceof Refused && (e.status === 401 || e.status === 403)) authProblem(e);
  } finally {
    clearTimeout(silent);
    if (state.stream === ctrl) {
      state.stream = null;
      state.streamUp = false;
      renderLive();
      // The stream ended: the node went away, or restarted. Ask, then follow again.
      setTimeout(async () => {
        const ok = await attempt(() => api(op("status"), { timeout: 2000 }), null);
        if (ok) follow(true);
      }, 1000);
    }
  }
}

// ----- the service worker -----

let worker = null;

function tellWorker(msg) {
  const w = (navigator.serviceWorker && navigator.serviceWorker.controller) || worker;
  if (w) w.postMessage(msg);
}

async function startWorker() {
  if (!("serviceWorker" in navigator)) {
    state.precache = { state: "unsupported" };
    renderSaved();
    return;
  }
  navigator.serviceWorker.addEventListener("message", (event) => {
    const msg = event.data || {};
    if (msg.type === "precache") {
      state.precache = msg.status;
      renderSaved();
    }
  });
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    tellWorker({ type: "config", token: token() });
    // Media that failed before the worker could add the token: again, through it.
    if (state.gallery.missing.size) {
      state.gallery.missing = new Set();
      state.gallery.rendered = false;
      renderGallery();
    }
  });
  navigator.serviceWorker.startMessages();
  try {
    const reg = await navigator.serviceWorker.register("/kiosk-sw.js", { scope: "/kiosk", updateViaCache: "none" });
    worker = reg.installing || reg.waiting || reg.active;
    if (worker) worker.postMessage({ type: "config", token: token() });
    const ready = await navigator.serviceWorker.ready;
    worker = ready.active;
    worker.postMessage({ type: "config", token: token() });
    worker.postMessage({ type: "status" });
    if (state.online !== false) worker.postMessage({ type: "refresh", reason: "load" });
  } catch (e) {
    state.precache = { state: "unsupported", error: e.message };
    renderSaved();
  }
}
