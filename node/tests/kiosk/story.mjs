// The kiosk's browser story: a person at a kiosk screen, against a real popmesh node (node/tests/kiosk.rs runs it).
//
//   node story.mjs '<json config>'
//   config: { "base": "http://127.0.0.1:PORT", "zone": "foyer", "pass": "<pass text>", "token": null | "<screen token>",
//             "shots": "<dir>", "chromium": "/usr/bin/chromium",
//             "profile": { "group": "3", "first_name_marker": "<a unique first name>" } }
//
// Protocol on stdout, one line each: `STEP <name>` as each step passes (gallery, booked, suggestion, offline,
// live-again, forget, privacy; an `INFO <name>: ...` line may follow with what was seen), `KILL` when the node is to be killed (answer `killed` on stdin once it is),
// `RESTART` when it is to be started again on the same address and data (answer `restarted` once its API answers),
// then `OK` (exit 0), or `FAIL <step>: <what was seen>` with the page's text (exit 1, kiosk-failure.png saved).
//
// It reads the page as a person would (visible text), and records every request the page and its service worker
// make: none may carry what the attendee told the kiosk, nor their pass subject outside the check-in and booking,
// nor go to another origin.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const cfg = JSON.parse(process.argv[2] || "{}");
const STEP_MS = 30000;
const LINE_MS = 120000; // how long the driver may take to kill or restart the node
const base = String(cfg.base || "").replace(/\/$/, "");
const origin = new URL(base).origin;
const zone = cfg.zone || "site";
const group = Number((cfg.profile && cfg.profile.group) || 2);
const marker = (cfg.profile && cfg.profile.first_name_marker) || null;
const shots = cfg.shots || ".";
mkdirSync(shots, { recursive: true });

let step = "launch";
let browser;
let page;

// ----- stdin: the driver's answers -----

const rl = createInterface({ input: process.stdin });
const heard = [];
let waiting = null;
let stdinClosed = false;
rl.on("line", (line) => {
  heard.push(line.trim());
  if (waiting) waiting();
});
rl.on("close", () => {
  stdinClosed = true;
  if (waiting) waiting();
});

async function expectLine(want) {
  const deadline = Date.now() + LINE_MS;
  for (;;) {
    const i = heard.indexOf(want);
    if (i >= 0) {
      heard.splice(i, 1);
      return;
    }
    if (stdinClosed) throw new Error(`stdin closed while waiting for "${want}"`);
    if (Date.now() > deadline) throw new Error(`no "${want}" on stdin within ${LINE_MS / 1000} s`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 500);
      waiting = () => {
        clearTimeout(t);
        resolve();
      };
    });
    waiting = null;
  }
}

function say(line) {
  process.stdout.write(`${line}\n`);
}

// ----- what the browser sends -----

const requests = []; // { at, url, method, headers, body, sw, status }
const entries = new WeakMap(); // playwright's request -> its entry
const pending = [];
let subject = null; // the pass subject, from the node's check-in answer
let consentAt = null;

function record(req) {
  const entry = { at: Date.now(), url: req.url(), method: req.method(), body: req.postData() || "", sw: !!req.serviceWorker(), headers: req.headers() };
  requests.push(entry);
  entries.set(req, entry);
  pending.push(
    req
      .allHeaders()
      .then((h) => {
        entry.headers = h;
      })
      .catch(() => {}),
  );
  return entry;
}

// ----- reading the page -----

async function text(selector) {
  const l = page.locator(selector);
  if ((await l.count()) === 0) return "";
  return (await l.first().innerText().catch(() => "")).trim();
}

async function visible(selector) {
  return page.locator(selector).first().isVisible().catch(() => false);
}

/** Polls `probe` until it returns a truthy value; fails with `what` and the last thing seen. */
async function until(what, probe, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let seen;
  for (;;) {
    try {
      seen = await probe();
      if (seen && seen.ok !== false) return seen;
    } catch (e) {
      seen = `error: ${e.message}`;
    }
    if (Date.now() > deadline) {
      const shown = typeof seen === "object" && seen ? JSON.stringify(seen.seen ?? seen) : String(seen);
      throw new Error(`${what} (waited ${ms / 1000} s; last seen: ${shown})`);
    }
    await page.waitForTimeout(250);
  }
}

/** Whether every image of the gallery shows a picture and every video knows its size (the metadata is in). */
async function galleryLoaded() {
  return page.evaluate(() => {
    const tiles = [...document.querySelectorAll("#gallery-grid figure")].filter((f) => f.offsetParent !== null);
    const media = tiles.map((f) => f.querySelector("img, video"));
    const done = media.filter((m) => (m.tagName === "IMG" ? m.complete && m.naturalWidth > 0 : m.readyState >= 1));
    return { ok: media.length > 0 && done.length === media.length, seen: `${done.length} of ${media.length} media loaded` };
  });
}

/** The slots as a person reads them: key, label, and the seats line ("12 seats left", "unknown while offline"). */
async function slots() {
  return page.$$eval("#slots li", (lis) =>
    lis.map((li) => ({
      key: li.dataset.slot,
      label: (li.querySelector(".slot-label b") || {}).innerText || "",
      seats: (li.querySelector(".seats") || {}).innerText || "",
      button: li.querySelector("button.choose") ? { disabled: li.querySelector("button.choose").disabled } : null,
    })),
  );
}

/** Every visible button and text field is a touch target of at least 64 by 64 CSS pixels. */
async function bigTargets(where) {
  const small = await page.$$eval("button, input", (els) =>
    els
      .filter((e) => e.offsetParent !== null)
      .map((e) => ({ what: `${e.tagName.toLowerCase()} "${(e.innerText || e.placeholder || e.id).trim()}"`, r: e.getBoundingClientRect() }))
      .filter((x) => x.r.width < 64 || x.r.height < 64)
      .map((x) => `${x.what} ${Math.round(x.r.width)}x${Math.round(x.r.height)}`),
  );
  if (small.length) throw new Error(`touch targets under 64 px ${where}: ${small.join(", ")}`);
}

function seatsNumber(line) {
  const m = /^(\d+) seats? left$/.exec(line.trim());
  return m ? Number(m[1]) : null;
}

async function shot(name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, name), fullPage: true });
}

/** A video's byte range, asked of the service worker while the node is down: a 206 cut from the cached file. */
async function rangeFromCache() {
  return page.evaluate(async () => {
    const v = document.querySelector("#gallery-grid video");
    if (!v) return { ok: true, seen: "no video in the gallery" };
    const src = new URL(v.currentSrc || v.src).pathname;
    const whole = new Uint8Array(await (await fetch(src)).arrayBuffer());
    const seen = [];
    for (const [range, from, to] of [["bytes=10-109", 10, 109], ["bytes=-50", whole.length - 50, whole.length - 1], [`bytes=${whole.length - 20}-`, whole.length - 20, whole.length - 1]]) {
      const r = await fetch(src, { headers: { range } });
      const part = new Uint8Array(await r.arrayBuffer());
      const want = whole.slice(from, to + 1);
      const same = part.length === want.length && part.every((b, i) => b === want[i]);
      const cr = r.headers.get("content-range");
      seen.push(`${range}: ${r.status} ${cr} ${part.length} bytes${same ? "" : " (wrong bytes)"}`);
      if (r.status !== 206 || cr !== `bytes ${from}-${to}/${whole.length}` || !same) return { ok: false, seen };
    }
    const bad = await fetch(src, { headers: { range: `bytes=${whole.length + 5}-` } });
    seen.push(`past the end: ${bad.status} ${bad.headers.get("content-range")}`);
    return { ok: bad.status === 416, seen };
  });
}

// ----- the story -----

async function gallery() {
  step = "gallery";
  const url = `${base}/kiosk?zone=${encodeURIComponent(zone)}${cfg.token ? `#token=${encodeURIComponent(cfg.token)}` : ""}`;
  await page.goto(url, { waitUntil: "load", timeout: STEP_MS });
  if (page.url().includes("token=")) throw new Error(`the token is still in the address bar: ${page.url()}`);
  await until(`the zone "${zone}" in a corner`, async () => (await text("#zone")).includes(zone));
  await until("the gallery renders", galleryLoaded);
  await until("every slot shows its availability as a number", async () => {
    const s = await slots();
    const ok = s.length > 0 && s.every((x) => seatsNumber(x.seats) !== null || /^(Sold out|Full at this kiosk)$/.test(x.seats));
    return { ok: ok && s.some((x) => seatsNumber(x.seats) !== null), seen: s };
  });
  await bigTargets("on the start screen");
  await until("the service worker controls the page", () => page.evaluate(() => !!navigator.serviceWorker.controller));
  const saved = await until("the page says what is saved for offline", async () => {
    const line = await text("#saved");
    const m = /^Saved for offline: (\d+) of (\d+) media kept/.exec(line);
    return { ok: !!m && !line.includes("updating") && Number(m[1]) === Number(m[2]) && Number(m[2]) > 0, seen: line, line };
  });
  // With the worker in control, the gallery again (media now through it).
  await until("the gallery renders through the service worker", galleryLoaded);
  await shot("kiosk-gallery.png");
  say("STEP gallery");
  say(`INFO gallery: ${saved.line}`);
}

let booked = null; // { key, label, before, after, seats }

async function checkInAndBook() {
  step = "booked";
  page.on("response", async (r) => {
    if (r.url().endsWith("/v1/check-ins") && r.request().method() === "POST" && r.ok()) {
      const body = await r.json().catch(() => ({}));
      if (body.subject) subject = body.subject;
    }
  });
  await page.locator("#pass").fill(cfg.pass);
  await page.getByRole("button", { name: "Check in", exact: true }).click();
  await until('the page welcomes the attendee ("Welcome")', async () => (await visible("#welcome")) && (await text("#greeting")).startsWith("Welcome"));
  if (!subject) throw new Error("the check-in answered without a pass subject");

  await until('the question "How many in your group?"', async () => (await text("#question")).includes("How many in your group?"));
  await bigTargets("with the first question");
  await page.locator("#question").getByRole("button", { name: String(group), exact: true }).click();
  await until("the consent question", async () => (await text("#question")).includes("May this kiosk count what you look at and book"));
  consentAt = Date.now();
  await page.locator("#question").getByRole("button", { name: "Yes", exact: true }).click();
  await until("no more questions this visit, the answers kept here", async () => {
    const kept = await text("#kept");
    return { ok: !(await visible("#question")) && kept.includes(`group of ${group}`) && kept.includes("counting allowed"), seen: kept };
  });
  if (marker) {
    await page.locator("#first-name").fill(marker);
    await page.locator("#name-form").getByRole("button", { name: "Save" }).click();
    await until(`the greeting with the first name`, async () => (await text("#greeting")) === `Welcome, ${marker}!`);
  }

  // A slot with room for the group, from the live list.
  const list = await slots();
  const pick = list.find((x) => (seatsNumber(x.seats) || 0) >= group && x.button && !x.button.disabled);
  if (!pick) throw new Error(`no slot with ${group} seats to choose: ${JSON.stringify(list)}`);
  const before = seatsNumber(pick.seats);
  const row = page.locator(`#slots li[data-slot="${pick.key}"]`);
  await row.getByRole("button", { name: "Choose" }).click();
  await until("the booking panel for the slot", async () => (await visible("#booking-form")) && (await text("#booking-what")).includes(pick.label));
  await bigTargets("with the booking panel open");
  for (let i = 1; i < group; i++) await page.getByRole("button", { name: "One seat more" }).click();
  const label = group === 1 ? "Book 1 seat" : `Book ${group} seats`;
  await until(`the button "${label}"`, async () => (await text("#book-button")) === label);
  await page.getByRole("button", { name: label, exact: true }).click();
  await until("the confirmation, in large text", async () => {
    const t = await text("#confirmation");
    return { ok: (await visible("#confirmation")) && t.includes("Booked!") && t.includes(`${group === 1 ? "1 seat" : `${group} seats`} for ${pick.label}`), seen: t };
  });
  const after = await until(`the availability of ${pick.label} drops by ${group}`, async () => {
    const s = (await slots()).find((x) => x.key === pick.key);
    const n = s && seatsNumber(s.seats);
    return { ok: n === before - group, seen: s && s.seats, n };
  });
  booked = { key: pick.key, label: pick.label, before, after: after.n, seats: group };
  await shot("kiosk-booked.png");
  say("STEP booked");
  say(`INFO booked: ${group} seats for ${pick.label}: ${before} -> ${after.n} left`);
}

async function suggestion() {
  step = "suggestion";
  const cards = await until("a suggestion with its reason", async () => {
    const list = await page.$$eval("#suggestion-list li", (lis) =>
      lis.filter((li) => li.offsetParent !== null).map((li) => ({ key: li.dataset.slot, text: li.innerText, reason: (li.querySelector(".reason") || {}).innerText || "" })),
    );
    return { ok: list.length > 0 && list.every((c) => /^Why this\?\s*\S/.test(c.reason.trim())), seen: list, list };
  });
  if (cards.list.length > 3) throw new Error(`more than 3 suggestions: ${cards.list.length}`);
  if (cards.list.some((c) => c.key === booked.key)) throw new Error(`the slot booked this visit (${booked.label}) is still suggested`);
  const note = "Suggestions are worked out on this kiosk; your answers never leave it.";
  if (!(await page.getByText(note).isVisible())) throw new Error(`the page does not say "${note}"`);
  // With consent, the kiosk reports what it showed (a zone and slots, checked in the privacy step).
  await until("the suggestions shown reported (consent was yes)", async () =>
    requests.some((r) => r.method === "POST" && new URL(r.url).pathname === "/v1/suggestions/feedback" && r.status === 202 && JSON.parse(r.body).event === "shown"),
  );
  await shot("kiosk-suggestion.png");
  say("STEP suggestion");
  say(`INFO suggestion: ${cards.list.map((c) => c.reason.replace(/\s+/g, " ")).join(" | ")}`);
}

async function offline() {
  step = "offline";
  say("KILL");
  await expectLine("killed");
  await page.reload({ waitUntil: "load", timeout: STEP_MS });
  await until("the offline banner", async () => (await visible("#offline")) && (await text("#offline")).startsWith("Offline"));
  await until("the gallery renders from the cache", galleryLoaded);
  await until("the fallback entry shown prominently", () =>
    page.evaluate(() => {
      const m = document.querySelector("#featured img, #featured video");
      return !!m && m.offsetParent !== null && (m.tagName === "IMG" ? m.naturalWidth > 0 : m.readyState >= 1);
    }),
  );
  await until('availability "unknown while offline", booking disabled', async () => {
    const s = await slots();
    return { ok: s.length > 0 && s.every((x) => x.seats === "unknown while offline" && (!x.button || x.button.disabled)), seen: s };
  });
  const ranges = await until("a video's Range request answered from the cache with a 206", rangeFromCache);
  if (await visible("#book-button")) {
    if (!(await page.locator("#book-button").isDisabled())) throw new Error("the Book button is enabled while offline");
  }
  await shot("kiosk-offline.png");
  say("STEP offline");
  say(`INFO offline: ${Array.isArray(ranges.seen) ? ranges.seen.join("; ") : ranges.seen}`);
}

async function liveAgain() {
  step = "live-again";
  say("RESTART");
  await expectLine("restarted");
  await until("the banner goes away by itself", async () => !(await visible("#offline")));
  await until("availability shows numbers again", async () => {
    const s = await slots();
    const mine = s.find((x) => x.key === booked.key);
    return { ok: s.length > 0 && s.every((x) => seatsNumber(x.seats) !== null || /^(Sold out|Full at this kiosk)$/.test(x.seats)) && mine && seatsNumber(mine.seats) === booked.after, seen: s };
  });
  await shot("kiosk-live-again.png");
  say("STEP live-again");
}

async function forget() {
  step = "forget";
  await until("the attendee still checked in", () => visible("#forget-button"));
  await page.getByRole("button", { name: "Forget me on this kiosk" }).click();
  await until("the page says it forgot", async () => (await text("#join-notice")).startsWith("Forgotten"));
  const left = await page.evaluate((s) => Object.keys(localStorage).filter((k) => k.includes(s) || (localStorage.getItem(k) || "").includes(s)), subject);
  if (left.length) throw new Error(`localStorage still holds the attendee under ${left.join(", ")}`);
  say("STEP forget");
}

function keysOf(value) {
  return value && typeof value === "object" && !Array.isArray(value) ? Object.keys(value) : [];
}

async function privacy() {
  step = "privacy";
  await Promise.all(pending);
  const problems = [];
  const path = (u) => {
    try {
      return new URL(u).pathname;
    } catch {
      return u;
    }
  };
  for (const r of requests) {
    const u = new URL(r.url);
    const where = `${r.method} ${u.pathname}${u.search}${r.sw ? " (service worker)" : ""}`;
    if (!["data:", "blob:", "about:"].includes(u.protocol) && u.origin !== origin) problems.push(`a request to another origin: ${r.url}`);
    const sent = `${u.pathname}${u.search}\n${JSON.stringify(r.headers)}\n${r.body}`;
    const p = u.pathname;
    const isCheckIn = r.method === "POST" && p === "/v1/check-ins";
    const isBooking = r.method === "POST" && /^\/v1\/shows\/[^/]+\/slots\/[^/]+\/bookings$/.test(p);
    const isFeedback = r.method === "POST" && p === "/v1/suggestions/feedback";
    if (subject && sent.includes(subject) && !isCheckIn && !isBooking) problems.push(`${where} carries the pass subject`);
    if (marker && sent.includes(marker)) problems.push(`${where} carries the first name`);
    if (cfg.token && `${u.pathname}${u.search}`.includes(cfg.token)) problems.push(`${where} carries the token in its URL`);
    for (const k of u.searchParams.keys()) if (!["zone", "limit", "show"].includes(k)) problems.push(`${where}: query parameter ${k}`);
    if (p.startsWith("/v1/attendees")) problems.push(`${where}: the kiosk sent a profile to the node`);
    if (cfg.token && (p.startsWith("/v1/") || p.startsWith("/media/")) && (r.sw || p.startsWith("/v1/"))) {
      if (r.headers.authorization !== `Bearer ${cfg.token}`) problems.push(`${where} without the screen's token`);
    }
    if (r.method === "GET" || r.method === "HEAD") continue;
    let body;
    try {
      body = JSON.parse(r.body || "null");
    } catch {
      problems.push(`${where}: a body that is not JSON`);
      continue;
    }
    const allowed = isCheckIn ? ["pass", "show"] : isBooking ? ["seats", "attendee", "booking_id"] : isFeedback ? ["zone", "event", "items", "booking_id"] : null;
    if (!allowed) {
      problems.push(`${where}: a request that changes something, not expected of the kiosk: ${r.body}`);
      continue;
    }
    for (const k of keysOf(body)) if (!allowed.includes(k)) problems.push(`${where}: field ${k} (${r.body})`);
    if (isBooking && body.attendee !== subject) problems.push(`${where}: the booking's attendee is not the pass subject`);
    if (isBooking && !/^[A-Za-z0-9_\-.:]{1,64}$/.test(String(body.booking_id))) problems.push(`${where}: booking_id ${body.booking_id}`);
    if (isFeedback) {
      if (body.zone !== zone) problems.push(`${where}: zone ${body.zone}, not ${zone}`);
      if (!["shown", "booked"].includes(body.event)) problems.push(`${where}: event ${body.event}`);
      if (body.booking_id !== undefined && body.event !== "booked") problems.push(`${where}: a booking id on a ${body.event} report`);
      for (const item of body.items || []) for (const k of keysOf(item)) if (!["show", "slot"].includes(k)) problems.push(`${where}: item field ${k}`);
      if (consentAt === null || r.at < consentAt) problems.push(`${where}: feedback before the attendee consented`);
    }
  }
  if (!requests.some((r) => r.method === "GET" && new URL(r.url).pathname === "/v1/openapi.json" && r.status === 200)) {
    problems.push("the page never read the node's contract (GET /v1/openapi.json)");
  }
  const feedbacks = requests.filter((r) => r.method === "POST" && path(r.url) === "/v1/suggestions/feedback").length;
  if (problems.length) throw new Error(`what the browser sent:\n  ${[...new Set(problems)].join("\n  ")}`);
  say("STEP privacy");
  say(`INFO privacy: ${requests.length} requests, ${requests.filter((r) => r.sw).length} by the service worker, ${feedbacks} feedback reports`);
}

async function main() {
  browser = await chromium.launch({ executablePath: cfg.chromium || "/usr/bin/chromium", args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  const context = await browser.newContext({ viewport: { width: 1080, height: 1920 }, serviceWorkers: "allow" });
  context.on("request", record);
  context.on("requestfinished", async (req) => {
    const entry = entries.get(req);
    const resp = await req.response().catch(() => null);
    if (entry && resp) entry.status = resp.status();
  });
  page = await context.newPage();
  await gallery();
  await checkInAndBook();
  await suggestion();
  await offline();
  await liveAgain();
  await forget();
  await privacy();
  say("OK");
}

try {
  await main();
  await browser.close().catch(() => {});
  process.exit(0);
} catch (e) {
  let seen = "";
  if (page) {
    seen = await page.innerText("body").catch(() => "(no page text)");
    await page.screenshot({ path: join(shots, "kiosk-failure.png"), fullPage: true }).catch(() => {});
  }
  say(`FAIL ${step}: ${String(e.message).replace(/\n\s*/g, " | ")}`);
  say(`--- the page's text ---\n${seen}\n--- end ---`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
