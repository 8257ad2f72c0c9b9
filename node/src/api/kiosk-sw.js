/* popmesh kiosk service worker (GET /kiosk-sw.js, registered with scope /kiosk).
 *
 * Three tiers that degrade gracefully:
 * - the app shell (/kiosk, /kiosk/app.js, /kiosk/view.js, /kiosk/app.css): cache first, refreshed in the background when the node
 *   answers;
 * - media: /media/{hash} is content-addressed, so cache first (a Range request is answered from the cached whole
 *   file with a 206); /media/by-name/ and /v1/manifests: network first with a short timeout, then the cache;
 * - everything else under /v1/ (availability, shows, check-ins, bookings, events, suggestions): network only, never
 *   cached, because a stale availability would sell seats that are gone.
 *
 * The precache of the manifests' media has a budget: no file over FILE_BYTES_MAX, and no more than
 * min(BUDGET_BYTES_MAX, half the storage quota) in all. What was kept and skipped is the precache status, which
 * the page shows ("3 of 4 media kept for offline").
 *
 * A kiosk screen that is not the node's own device carries a client token. The page hands it over with
 * postMessage({type: "config", token}); it is kept in Cache Storage (so it survives this worker's restarts) and
 * added as `Authorization: Bearer` to same-origin /media/ and /v1/ requests that do not carry one (an <img> or a
 * <video> cannot set headers). Nothing else leaves this worker: no request goes to another origin.
 */
"use strict";

const SHELL_CACHE = "popmesh-kiosk-shell-v1";
const MEDIA_CACHE = "popmesh-kiosk-media-v1";
const DATA_CACHE = "popmesh-kiosk-data-v1";
const CACHES_OURS = [SHELL_CACHE, MEDIA_CACHE, DATA_CACHE];
const SHELL = ["/kiosk", "/kiosk/app.js", "/kiosk/view.js", "/kiosk/app.css"];
const MANIFESTS = "/v1/manifests";
// Keys in DATA_CACHE that are never fetched: this worker's own records.
const CONFIG_KEY = "/kiosk-sw/config";
const STATUS_KEY = "/kiosk-sw/status";

/** No single file larger than this is kept for offline. */
const FILE_BYTES_MAX = 50 * 1024 * 1024;
/** The precache never grows past this, nor past half the storage quota. */
const BUDGET_BYTES_MAX = 500 * 1024 * 1024;
/** How long a network-first request waits for the node before the cache answers. */
const NETWORK_FIRST_TIMEOUT_MS = 2000;
/** How long installing waits for the media precache (it goes on after; the page asks for the rest on each load). */
const INSTALL_WAIT_MS = 60000;
/** How long one media download of the precache may take. */
const DOWNLOAD_TIMEOUT_MS = 120000;
/** Header on answers this worker made from its cache while the node did not answer. */
const FROM_CACHE_HEADER = "x-kiosk-cache";
/** The node's header on an answer that is its fallback entry instead of the blob asked for. */
const FALLBACK_HEADER = "x-popmesh-fallback";

// ----- the token -----

let tokenLoaded = null; // a promise of the token (string) or null
let tokenKnown; // the token once loaded: undefined until then

function token() {
  if (!tokenLoaded) {
    tokenLoaded = caches
      .open(DATA_CACHE)
      .then((c) => c.match(CONFIG_KEY))
      .then((r) => (r ? r.json() : {}))
      .then((c) => (typeof c.token === "string" && c.token ? c.token : null))
      .catch(() => null)
      .then((t) => {
        tokenKnown = t;
        return t;
      });
  }
  return tokenLoaded;
}
token();

async function setToken(value) {
  const t = typeof value === "string" && value ? value : null;
  tokenKnown = t;
  tokenLoaded = Promise.resolve(t);
  const c = await caches.open(DATA_CACHE);
  await c.put(CONFIG_KEY, jsonResponse({ token: t }));
}

/** A same-origin request for `url` with the token added (unless `init.headers` already carry one). */
async function authed(url, init = {}) {
  const headers = new Headers(init.headers || {});
  const t = await token();
  if (t && !headers.has("authorization")) headers.set("authorization", `Bearer ${t}`);
  return new Request(url, { ...init, headers, credentials: "omit" });
}

function jsonResponse(value, status = 200, extra = {}) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...extra },
  });
}

/** What the page reads when neither the node nor the cache can answer. */
function offlineAnswer(what) {
  return jsonResponse(
    { error: { status: 503, code: "offline", message: `${what}: the node does not answer and nothing is saved on this kiosk` } },
    503,
    { [FROM_CACHE_HEADER]: "miss" },
  );
}

// ----- lifecycle -----

self.addEventListener("install", (event) => {
  self.skipWaiting();
  event.waitUntil(
    (async () => {
      const shell = await caches.open(SHELL_CACHE);
      await shell.addAll(SHELL.map((u) => new Request(u, { cache: "reload", credentials: "omit" })));
      // The manifests and their media too, when the node lets this worker read them (with the token kept from an
      // earlier run, or none on the node's own device); otherwise the page asks again once it has told the token.
      // A refresh that fails leaves the status saying why: the shell is what installing needs, and a long download
      // does not hold the worker back from serving it (what is cached stays cached; the next refresh goes on).
      await Promise.race([refresh("install").catch(() => {}), new Promise((r) => setTimeout(r, INSTALL_WAIT_MS))]);
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith("popmesh-kiosk-") && !CACHES_OURS.includes(name)) await caches.delete(name);
      }
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("message", (event) => {
  const msg = event.data || {};
  const reply = (value) => event.source && event.source.postMessage(value);
  if (msg.type === "config") {
    event.waitUntil(setToken(msg.token).then(() => reply({ type: "config-kept" })));
  } else if (msg.type === "refresh") {
    event.waitUntil(refresh(msg.reason || "page").catch(() => {}));
  } else if (msg.type === "status") {
    event.waitUntil(readStatus().then((s) => reply({ type: "precache", status: s })));
  }
});

// ----- fetch -----

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return; // never another origin's business
  if (req.method !== "GET") return; // check-ins and bookings go to the node untouched, never queued
  const path = url.pathname;
  if (req.mode === "navigate" && path === "/kiosk") {
    event.respondWith(shell(event, "/kiosk"));
  } else if (SHELL.includes(path)) {
    event.respondWith(shell(event, path));
  } else if (path.startsWith("/media/by-name/")) {
    event.respondWith(byName(req, decodeURIComponent(path.slice("/media/by-name/".length))));
  } else if (path.startsWith("/media/")) {
    event.respondWith(byHash(req, path.slice("/media/".length)));
  } else if (path === MANIFESTS) {
    event.respondWith(manifests(req));
  } else if (path === "/v1/events") {
    // The page reads the event stream itself (with its own header); a long stream is not this worker's to hold.
  } else if (path.startsWith("/v1/")) {
    // Network only. The page sends its own header; add it to a request that has none (when there is a token).
    if (!req.headers.has("authorization") && tokenKnown !== null) event.respondWith(networkOnly(req));
  }
});

/** Cache first; the node's copy replaces the cached one in the background. */
async function shell(event, path) {
  const cache = await caches.open(SHELL_CACHE);
  const update = fetch(new Request(path, { cache: "no-cache", credentials: "omit" }))
    .then(async (r) => {
      if (r.ok) await cache.put(path, r.clone());
      return r;
    })
    .catch(() => null);
  const cached = await cache.match(path, { ignoreSearch: true });
  if (cached) {
    event.waitUntil(update);
    return cached;
  }
  return (await update) || new Response("the kiosk page is not saved on this device and the node does not answer", {
    status: 503,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}

async function networkOnly(req) {
  const headers = new Headers(req.headers);
  return fetch(await authed(req.url, { headers, cache: "no-store" }));
}

/** A fetch that gives up after `ms` (the request is aborted). */
async function fetchWithin(request, ms) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), ms);
  try {
    return await fetch(request, { signal: ctrl.signal });
  } finally {
    clearTimeout(timer);
  }
}

function mediaKey(hash) {
  return new URL(`/media/${hash}`, self.location.origin).href;
}

/** /media/{hash}: immutable, so cache first; a Range is cut from the cached whole file. */
async function byHash(req, hash) {
  const cache = await caches.open(MEDIA_CACHE);
  const cached = await cache.match(mediaKey(hash), { ignoreVary: true });
  if (cached) return withRange(cached, req.headers.get("range"));
  return fromNode(req);
}

/** The request sent on to the node, with the token and the Range it asked for. */
async function fromNode(req) {
  const headers = {};
  const range = req.headers.get("range");
  if (range) headers.range = range;
  try {
    return await fetch(await authed(req.url, { headers }));
  } catch {
    return new Response("", { status: 504, statusText: "the node does not answer" });
  }
}

/** /media/by-name/{name}: the name may point at new media, so network first, then the cached blob it named. */
async function byName(req, name) {
  try {
    const r = await fetchWithin(await authed(req.url, { headers: rangeHeaders(req) }), NETWORK_FIRST_TIMEOUT_MS);
    if (r.status < 500) return r;
  } catch {
    // the node does not answer: the cache does
  }
  const listed = await cachedManifests();
  for (const m of listed) {
    const e = (m.entries || []).find((x) => x.name === name);
    if (!e) continue;
    const cached = await (await caches.open(MEDIA_CACHE)).match(mediaKey(e.hash), { ignoreVary: true });
    if (cached) return withRange(cached, req.headers.get("range"));
  }
  return new Response("", { status: 504, statusText: "not saved on this kiosk" });
}

function rangeHeaders(req) {
  const range = req.headers.get("range");
  return range ? { range } : {};
}

/** /v1/manifests: network first (2 s), the answer kept; the kept answer when the node does not answer. */
async function manifests(req) {
  const cache = await caches.open(DATA_CACHE);
  try {
    const r = await fetchWithin(await authed(req.url, { cache: "no-store" }), NETWORK_FIRST_TIMEOUT_MS);
    if (r.ok) {
      await cache.put(MANIFESTS, r.clone());
      return r;
    }
    if (r.status < 500) return r; // a 401 or 403 is the node's word, not an outage
  } catch {
    // fall through to the cache
  }
  const cached = await cache.match(MANIFESTS);
  if (!cached) return offlineAnswer("the media manifests");
  const headers = new Headers(cached.headers);
  headers.set(FROM_CACHE_HEADER, "hit");
  return new Response(cached.body, { status: 200, headers });
}

async function cachedManifests() {
  try {
    const r = await (await caches.open(DATA_CACHE)).match(MANIFESTS);
    return r ? (await r.json()).manifests || [] : [];
  } catch {
    return [];
  }
}

/**
 * A Range request answered from a cached whole (200) response: 206 with Content-Range for one satisfiable range
 * (`bytes=a-b`, `a-`, `-n`), 416 for an unsatisfiable one, the whole file for anything else (several ranges, a
 * malformed header), as a server may.
 */
async function withRange(cached, range) {
  if (!range) return cached;
  const m = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(range.trim());
  if (!m || (m[1] === "" && m[2] === "")) return cached;
  const blob = await cached.blob();
  const size = blob.size;
  let start;
  let end; // inclusive
  if (m[1] === "") {
    const n = Number(m[2]);
    if (n === 0) return unsatisfiable(size);
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Number(m[2]);
    if (end < start) return unsatisfiable(size);
    end = Math.min(end, size - 1);
  }
  if (start >= size) return unsatisfiable(size);
  const headers = new Headers();
  for (const name of ["content-type", "etag", "cache-control"]) {
    const v = cached.headers.get(name);
    if (v) headers.set(name, v);
  }
  headers.set("accept-ranges", "bytes");
  headers.set("content-range", `bytes ${start}-${end}/${size}`);
  headers.set("content-length", String(end - start + 1));
  return new Response(blob.slice(start, end + 1), { status: 206, statusText: "Partial Content", headers });
}

function unsatisfiable(size) {
  return new Response("", { status: 416, statusText: "Range Not Satisfiable", headers: { "content-range": `bytes */${size}` } });
}

// ----- the precache of the manifests' media -----

let running = null;
let again = false;

/** Refreshes the precache; a request while one runs makes it run once more after (never two at once). */
function refresh(reason) {
  if (running) {
    again = true;
    return running;
  }
  running = (async () => {
    do {
      again = false;
      await refreshOnce(reason);
    } while (again);
  })().finally(() => {
    running = null;
  });
  return running;
}

async function readStatus() {
  try {
    const r = await (await caches.open(DATA_CACHE)).match(STATUS_KEY);
    return r ? await r.json() : { state: "new" };
  } catch {
    return { state: "new" };
  }
}

async function publish(status) {
  await (await caches.open(DATA_CACHE)).put(STATUS_KEY, jsonResponse(status));
  const clients = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const c of clients) c.postMessage({ type: "precache", status });
}

/**
 * The media the kiosk shows (images and videos) of every manifest, each hash once, in the order they are kept:
 * fallback entries, then images, then videos (the precache stops at its budget, so the small and the essential
 * go first), each in manifest order.
 */
function mediaOf(list) {
  const fallbacks = [];
  const images = [];
  const videos = [];
  const seen = new Set();
  for (const m of list) {
    for (const e of m.entries || []) {
      if (typeof e.hash !== "string" || !/^[0-9a-f]{64}$/.test(e.hash)) continue;
      const mime = String(e.mime || "");
      if (!mime.startsWith("image/") && !mime.startsWith("video/")) continue;
      if (seen.has(e.hash)) continue;
      seen.add(e.hash);
      const list = e.name === m.fallback ? fallbacks : mime.startsWith("image/") ? images : videos;
      list.push({ name: e.name, hash: e.hash, size: Number(e.size) || 0, mime });
    }
  }
  return [...fallbacks, ...images, ...videos];
}

async function shellBytes() {
  let total = 0;
  const cache = await caches.open(SHELL_CACHE);
  for (const req of await cache.keys()) {
    const r = await cache.match(req);
    if (r) total += (await r.clone().blob()).size;
  }
  return total;
}

async function budgetBytes() {
  let quota = 0;
  try {
    const estimate = await self.navigator.storage.estimate();
    quota = Number(estimate.quota) || 0;
  } catch {
    // no estimate: the fixed ceiling alone
  }
  return quota > 0 ? Math.min(BUDGET_BYTES_MAX, Math.floor(quota / 2)) : BUDGET_BYTES_MAX;
}

async function refreshOnce(reason) {
  const before = await readStatus();
  await publish({ ...before, state: "running", reason });
  const data = await caches.open(DATA_CACHE);
  let list;
  let manifestBytes = 0;
  try {
    const r = await fetchWithin(await authed(MANIFESTS, { cache: "no-store" }), 10000);
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      const message = body.error && body.error.message ? body.error.message : `HTTP ${r.status}`;
      await publish({ ...before, state: r.status === 401 || r.status === 403 ? "needs-token" : "error", error: message, at: Date.now() });
      return;
    }
    const text = await r.text();
    manifestBytes = text.length;
    list = JSON.parse(text).manifests || [];
    await data.put(MANIFESTS, new Response(text, { headers: { "content-type": "application/json" } }));
  } catch (e) {
    // Offline: what is saved stays as it is.
    await publish({ ...before, state: before.state === "done" ? "done" : "offline", offline: true, at: Date.now() });
    return;
  }

  const media = await caches.open(MEDIA_CACHE);
  const wanted = mediaOf(list);
  const budget = await budgetBytes();
  let used = (await shellBytes()) + manifestBytes;
  const kept = new Set();
  const skipped = [];
  let full = false;
  for (const e of wanted) {
    if (e.size > FILE_BYTES_MAX) {
      skipped.push({ name: e.name, hash: e.hash, size: e.size, reason: "too-large" });
      continue;
    }
    if (full || used + e.size > budget) {
      full = true; // stop adding: the rest wait for room
      skipped.push({ name: e.name, hash: e.hash, size: e.size, reason: "budget" });
      continue;
    }
    const key = mediaKey(e.hash);
    let have = await media.match(key, { ignoreVary: true });
    if (!have) {
      try {
        const r = await fetchWithin(await authed(key, { cache: "no-store" }), DOWNLOAD_TIMEOUT_MS);
        const length = Number(r.headers.get("content-length"));
        if (r.status !== 200 || r.headers.has(FALLBACK_HEADER) || (length && e.size && length !== e.size)) {
          // Not on the node (yet): it served its fallback entry, or an error. Not kept under this hash.
          skipped.push({ name: e.name, hash: e.hash, size: e.size, reason: "unavailable" });
          continue;
        }
        await media.put(key, r);
        have = true;
      } catch {
        skipped.push({ name: e.name, hash: e.hash, size: e.size, reason: "unavailable" });
        continue;
      }
    }
    used += e.size;
    kept.add(key);
  }
  // Media no manifest names any more (or that no longer fits) leaves the cache.
  for (const req of await media.keys()) {
    if (!kept.has(req.url)) await media.delete(req);
  }
  await publish({
    state: "done",
    reason,
    total: wanted.length,
    kept: kept.size,
    skipped,
    bytes: used,
    budget,
    at: Date.now(),
  });
}
