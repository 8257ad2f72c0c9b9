/* popmesh attendee kiosk, part two (GET /kiosk/view.js): check-in, questions, booking,
 * suggestions worked out on this screen, and rendering. Runs after /kiosk/app.js (both classic deferred scripts,
 * sharing one global scope); see app.js for what an attendee's answers may and may not reach.
 */
"use strict";

// ----- check-in -----

async function checkIn(passText) {
  const pass = passText.trim();
  if (!pass || state.online === false) return;
  state.joinError = null;
  setBusy("checkin-button", true, "Checking in…");
  try {
    let answer;
    try {
      answer = await api(op("check_in"), { method: "POST", body: onlyShow ? { pass, show: onlyShow } : { pass } });
    } catch (e) {
      // Without a show the node checks the pass against the show on now; a pass for another of the site's shows
      // says which (`the pass is for show "x", not "y"`), and this kiosk serves every show.
      const other = !onlyShow && e instanceof Refused && e.code === "pass_refused" && /is for show "([^"]+)"/.exec(e.message);
      if (!other || !validName(other[1])) throw e;
      answer = await api(op("check_in"), { method: "POST", body: { pass, show: other[1] } });
    }
    $("pass").value = "";
    startVisit(answer.data);
  } catch (e) {
    if (e instanceof Offline) {
      wentOffline();
      state.joinError = "The node did not answer, so you are not checked in. Try again when the site network is back.";
    } else if (e instanceof Refused && e.code === "pass_refused") {
      state.joinError = refusal(e.message);
    } else if (e instanceof Refused && e.status === 400) {
      state.joinError = "That is not a pass we can read. Check the text, or ask staff.";
    } else {
      state.joinError = `Check-in did not work: ${e.message}`;
    }
  } finally {
    setBusy("checkin-button", false);
    renderJoin();
  }
}

/** A pass refusal in words for the attendee (the node's message is for staff). */
function refusal(message) {
  const m = String(message);
  const why = /already used/.test(m)
    ? "This pass was already used to check in."
    : /expired/.test(m)
      ? "This pass has expired."
      : /not valid yet/.test(m)
        ? "This pass is not valid yet."
        : /revoked|retired/.test(m)
          ? "This pass is no longer valid."
          : /another site|for show/.test(m)
            ? "This pass is for another show."
            : /signature|forged/.test(m)
              ? "This pass could not be verified."
              : "This pass is not accepted here.";
  return `${why} Please ask staff.`;
}

function startVisit(pass) {
  state.visit = { subject: pass.subject, show: pass.show, at: Date.now(), booked: [], asked: 0, pending: {}, suggested: [] };
  state.reported = { at: -1, keys: new Set() };
  state.confirmation = null;
  state.selected = null;
  saveVisit();
  touched();
  renderAll();
  loadSuggestions();
}

function endVisit(message) {
  state.visit = null;
  state.selected = null;
  state.confirmation = null;
  state.bookError = null;
  state.joinError = null;
  state.reported = { at: -1, keys: new Set() };
  state.notice = message || null;
  saveVisit();
  renderAll();
  if (message) setTimeout(() => {
    if (state.notice === message) {
      state.notice = null;
      renderJoin();
    }
  }, 8000);
}

function forgetMe() {
  if (state.visit) {
    try {
      localStorage.removeItem(PROFILE_PREFIX + state.visit.subject);
    } catch {
      // nothing kept
    }
  }
  endVisit("Forgotten: this kiosk keeps nothing you told it.");
}

// ----- questions, one or two a visit -----

const QUESTIONS = [
  {
    id: "group",
    text: "How many in your group?",
    answers: ["1", "2", "3", "4", "5", "6"].map((v) => ({ value: v, label: v })),
  },
  {
    id: "consent",
    text: "May this kiosk count what you look at and book, anonymously, to improve suggestions?",
    answers: [
      { value: true, label: "Yes" },
      { value: false, label: "No" },
    ],
  },
  {
    id: "when",
    text: "When would you like to go?",
    answers: [
      { value: "soon", label: "Soon" },
      { value: "later", label: "Later today" },
    ],
  },
];

function nextQuestion() {
  if (!state.visit || (state.visit.asked || 0) >= QUESTIONS_PER_VISIT) return null;
  const p = profile();
  const skipped = state.visit.skipped || [];
  return QUESTIONS.find((q) => p[q.id] === undefined && !skipped.includes(q.id)) || null;
}

function answer(q, value) {
  const v = state.visit;
  if (!v) return;
  if (value === undefined) v.skipped = [...(v.skipped || []), q.id];
  else saveProfile(v.subject, { ...profileOf(v.subject), [q.id]: value });
  v.asked = (v.asked || 0) + 1;
  saveVisit();
  renderJoin();
  renderSuggestions();
  if (q.id === "consent" && value === true) reportShown();
}

// ----- booking -----

function choose(key) {
  if (!state.visit) return;
  state.selected = key;
  state.seats = 1;
  state.bookError = null;
  state.confirmation = null;
  renderBooking();
  renderSlots();
  $("booking").scrollIntoView({ behavior: "smooth", block: "center" });
}

function seatsMax() {
  const a = state.selected && state.avail.get(state.selected);
  const here = a && typeof a.available_here === "number" ? a.available_here : 0;
  return Math.max(0, Math.min(here, SEATS_PER_BOOKING_MAX));
}

async function book() {
  const v = state.visit;
  const key = state.selected;
  if (!v || !key || state.online !== true || state.booking) return;
  const [show, slot] = key.split("/");
  const seats = state.seats;
  // One id per slot and seat count in this visit: a retry after a lost answer books once.
  const pendingKey = `${key}#${seats}`;
  const bookingId = (v.pending && v.pending[pendingKey]) || `kiosk-${randomHex(12)}`;
  v.pending = { ...(v.pending || {}), [pendingKey]: bookingId };
  saveVisit();
  state.booking = true;
  state.bookError = null;
  renderBooking();
  try {
    const { data } = await api(op("book", { show, slot }), {
      method: "POST",
      body: { seats, attendee: v.subject, booking_id: bookingId },
    });
    delete v.pending[pendingKey];
    const info = slotInfo(key) || {};
    const booked = { show, slot, seats, booking_id: bookingId, label: info.label || slot, starts_at: info.starts_at };
    v.booked = [...(v.booked || []), booked];
    saveVisit();
    if (data && data.availability) state.avail.set(key, data.availability);
    state.confirmation = booked;
    state.selected = null;
    if ((v.suggested || []).includes(key)) reportBooked(show, slot, bookingId);
    loadSuggestions();
  } catch (e) {
    if (e instanceof Offline) {
      wentOffline();
      state.bookError =
        "The node did not answer: the booking may not have been made. When the site network is back, tap Book again; it will not book twice.";
    } else if (e instanceof Refused) {
      delete v.pending[pendingKey];
      saveVisit();
      state.bookError =
        e.code === "quota_spent"
          ? "This kiosk has no more seats for that slot. Pick another, or ask at the box office."
          : e.code === "slot_full"
            ? "That slot is full."
            : `The booking was not made: ${e.message}`;
      loadAvailability([key]);
    }
  } finally {
    state.booking = false;
    renderAll();
    if (state.confirmation) $("confirmation").scrollIntoView({ behavior: "smooth", block: "center" });
  }
}

// ----- suggestions, worked out here -----

/**
 * The node's Thompson-sampled ranking for this zone and hour, then, on this kiosk only: slots booked this visit
 * dropped, slots with fewer seats than the group dropped, "soon" or "later" preferred, and a slot others booked
 * with one booked this visit first.
 */
function pickSuggestions() {
  const s = state.suggestions;
  if (!s) return [];
  const v = state.visit;
  const p = profile();
  const group = groupSize();
  const booked = new Set(((v && v.booked) || []).map((b) => slotKey(b.show, b.slot)));
  const now = Date.now();
  const seatsNow = (key, fallback) => {
    const a = state.avail.get(key);
    return a && typeof a.available_here === "number" ? a.available_here : fallback;
  };
  const fits = (key, available) => !booked.has(key) && seatsNow(key, available) >= group;
  let list = (s.suggestions || [])
    .filter((x) => !onlyShow || x.show === onlyShow)
    .map((x) => ({ ...x, key: slotKey(x.show, x.slot) }))
    .filter((x) => fits(x.key, x.available));
  if (p.when === "soon" || p.when === "later") {
    const soon = (x) => x.starts_at - now >= 0 && x.starts_at - now <= SOON_MS;
    const want = p.when === "soon" ? soon : (x) => x.starts_at - now > SOON_MS;
    list = [...list.filter(want), ...list.filter((x) => !want(x))];
  }
  // "Others who booked X also booked Y": Y first.
  const firsts = [];
  for (const b of (v && v.booked) || []) {
    const pair = (s.also_booked || []).find((a) => a.show === b.show && a.slot === b.slot);
    for (const w of (pair && [...pair.with].sort((a, c) => c.attendees - a.attendees)) || []) {
      const key = slotKey(w.show, w.slot);
      const known = list.find((x) => x.key === key);
      const info = slotInfo(key);
      const available = seatsNow(key, known ? known.available : 0);
      if (!fits(key, available) || firsts.some((f) => f.key === key)) continue;
      if (!known && !info) continue;
      const label = (known && known.label) || info.label;
      firsts.push({
        ...(known || { show: w.show, slot: w.slot, label, starts_at: info.starts_at, available }),
        key,
        why: "also_booked",
        reason: `${w.attendees} others who booked ${b.label} also booked ${label}`,
      });
    }
  }
  const out = [...firsts, ...list.filter((x) => !firsts.some((f) => f.key === x.key))];
  return out.slice(0, SUGGESTIONS_SHOWN);
}

async function feedback(event, items, bookingId) {
  if (!state.visit || profile().consent !== true || !items.length) return;
  // A zone and slots (and for a booking, the booking's own id, which the node checks it made): nothing about the
  // attendee.
  const body = bookingId ? { zone, event, items, booking_id: bookingId } : { zone, event, items };
  await attempt(() => api(op("feedback"), { method: "POST", body }), null);
}

let shownNow = [];

/** Reports the suggestions on screen as shown: each slot once per answer of the node. */
function reportShown() {
  if (!state.visit || profile().consent !== true || !shownNow.length) return;
  if (state.reported.at !== state.suggestionsAt) state.reported = { at: state.suggestionsAt, keys: new Set() };
  const fresh = shownNow.filter((x) => !state.reported.keys.has(x.key));
  if (!fresh.length) return;
  for (const x of fresh) state.reported.keys.add(x.key);
  feedback("shown", fresh.map((x) => ({ show: x.show, slot: x.slot })));
}

function reportBooked(show, slot, bookingId) {
  feedback("booked", [{ show, slot }], bookingId);
}

// ----- rendering -----

function setBusy(id, busy, label) {
  const b = $(id);
  if (!b) return;
  if (busy) {
    b.dataset.label = b.textContent;
    b.textContent = label;
    b.disabled = true;
  } else if (b.dataset.label) {
    b.textContent = b.dataset.label;
    delete b.dataset.label;
  }
}

function renderAll() {
  renderBanner();
  renderLive();
  renderGallery();
  renderJoin();
  renderBooking();
  renderSlots();
  renderSuggestions();
}

function renderBanner() {
  $("offline").hidden = state.online !== false;
  const auth = $("auth");
  auth.hidden = !state.auth;
  auth.textContent = state.auth || "";
  document.body.classList.toggle("is-offline", state.online === false);
}

function renderLive() {
  const live = $("live");
  if (state.online === false) {
    live.textContent = "offline";
    live.className = "live off";
  } else if (state.online === null) {
    live.textContent = "connecting…";
    live.className = "live";
  } else {
    live.textContent = state.streamUp ? "live" : "live (checking every few seconds)";
    live.className = "live on";
  }
}

function renderSaved() {
  const p = state.precache;
  const line = $("saved");
  if (!p) {
    line.textContent = "Saving the gallery for offline…";
    return;
  }
  if (p.state === "unsupported") {
    line.textContent = "This browser cannot keep the gallery for offline use (it needs https, or the node's own device).";
    return;
  }
  if (p.state === "needs-token") {
    line.textContent = "The gallery is not saved for offline yet: this screen's token was refused.";
    return;
  }
  if (typeof p.kept === "number" && typeof p.total === "number") {
    const skipped = p.skipped || [];
    const count = (r) => skipped.filter((x) => x.reason === r).length;
    const why = [];
    if (count("too-large")) why.push(`${count("too-large")} too large`);
    if (count("budget")) why.push(`${count("budget")} past the storage budget`);
    if (count("unavailable")) why.push(`${count("unavailable")} not on the node yet`);
    const running = p.state === "running" ? " (updating…)" : "";
    line.textContent = `Saved for offline: ${p.kept} of ${p.total} media kept on this kiosk${why.length ? ` (${why.join(", ")})` : ""}${running}`;
    return;
  }
  line.textContent = p.state === "error" ? `The gallery is not saved for offline yet: ${p.error}` : "Saving the gallery for offline…";
}

function mediaElement(item, featured) {
  const src = op("by_hash", { hash: item.hash });
  const onerror = () => {
    if (!state.gallery.missing.has(item.hash)) {
      state.gallery.missing.add(item.hash);
      renderFeatured();
    }
  };
  if (item.kind === "video") {
    const v = h("video", { src, muted: true, autoplay: true, loop: true, playsinline: true, preload: "auto", "aria-label": item.name, onerror });
    v.muted = true;
    return v;
  }
  return h("img", { src, alt: item.name.replace(/\.[a-z0-9]+$/i, "").replace(/[-_]+/g, " "), decoding: "async", onerror, class: featured ? "featured-media" : null });
}

function renderGallery() {
  const g = state.gallery;
  const grid = $("gallery-grid");
  if (!g.rendered) {
    grid.replaceChildren(
      ...g.items.map((item) =>
        h(
          "figure",
          { class: `tile ${item.kind}`, "data-hash": item.hash },
          mediaElement(item, false),
          h("figcaption", { text: item.name.replace(/\.[a-z0-9]+$/i, "").replace(/[-_]+/g, " ") }),
        ),
      ),
    );
    g.rendered = true;
    $("gallery-empty").hidden = g.items.length > 0;
  }
  for (const fig of grid.children) fig.classList.toggle("missing", g.missing.has(fig.dataset.hash));
  renderFeatured();
}

/** The fallback entry, prominent, when the screen is offline or other media are missing. */
function renderFeatured() {
  const g = state.gallery;
  const box = $("featured");
  const show = !!g.fallback && (state.online === false || g.missing.size > 0);
  for (const fig of $("gallery-grid").children) fig.classList.toggle("missing", g.missing.has(fig.dataset.hash));
  if (!show) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  if (box.dataset.hash !== g.fallback.hash || box.hidden) {
    box.dataset.hash = g.fallback.hash;
    box.replaceChildren(mediaElement(g.fallback, true));
  }
  box.hidden = false;
}

function renderJoin() {
  const v = state.visit;
  const offline = state.online === false;
  $("join-form").hidden = !!v;
  $("welcome").hidden = !v;
  $("checkin-button").disabled = offline;
  $("pass").disabled = offline;
  $("join-offline").hidden = !offline || !!v;
  $("scan-button").hidden = !("BarcodeDetector" in window && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) || offline;
  const err = $("join-error");
  err.hidden = !state.joinError;
  err.textContent = state.joinError || "";
  const notice = $("join-notice");
  notice.hidden = !state.notice;
  notice.textContent = state.notice || "";
  if (!v) return;
  const p = profile();
  $("greeting").textContent = p.name ? `Welcome, ${p.name}!` : "Welcome! You are checked in.";
  const facts = [];
  if (p.group) facts.push(`group of ${p.group}`);
  if (p.when) facts.push(p.when === "soon" ? "going soon" : "going later today");
  if (p.consent === true) facts.push("anonymous counting allowed");
  if (p.consent === false) facts.push("no counting");
  $("kept").textContent = facts.length
    ? `Kept on this kiosk only: ${facts.join(", ")}.`
    : "This kiosk keeps nothing about you unless you answer below.";
  const q = nextQuestion();
  const box = $("question");
  if (!q) {
    box.hidden = true;
    box.replaceChildren();
  } else {
    box.hidden = false;
    box.dataset.question = q.id;
    box.replaceChildren(
      h("p", { class: "question-text", text: q.text }),
      h(
        "div",
        { class: "answers" },
        q.answers.map((a) => h("button", { type: "button", class: "answer", "data-answer": String(a.value), onclick: () => answer(q, a.value) }, a.label)),
        h("button", { type: "button", class: "answer skip", onclick: () => answer(q, undefined) }, "Skip"),
      ),
      h("p", { class: "fine", text: "Your answer stays on this kiosk; it is never sent anywhere." }),
    );
  }
  $("name-box").hidden = !!p.name;
  $("booked-list").replaceChildren(
    ...(v.booked || []).map((b) => h("li", {}, `${seatsWord(b.seats)} · ${b.label}${b.starts_at ? ` · ${when(b.starts_at)}` : ""}`)),
  );
  $("booked-title").hidden = !(v.booked || []).length;
}

function seatsText(key) {
  if (state.online === false) return { text: "unknown while offline", cls: "unknown" };
  const a = state.avail.get(key);
  if (!a) return { text: "…", cls: "unknown" };
  if (a.error) return { text: a.code === "not_synced" || a.code === "loading" ? "checking…" : "unknown", cls: "unknown" };
  if (a.available_here > 0) return { text: `${seatsWord(a.available_here)} left`, cls: a.available_here <= 5 ? "few" : "ok", n: a.available_here };
  if (a.remaining > 0) return { text: "Full at this kiosk", cls: "full", n: 0 };
  return { text: "Sold out", cls: "full", n: 0 };
}

function renderSlots() {
  const list = $("slots");
  const slots = allSlots();
  $("slots-empty").hidden = slots.length > 0;
  $("slots-hint").textContent = state.visit
    ? state.online === false
      ? "Booking is back when the site network is."
      : "Tap Choose to book."
    : "Check in with your pass to book.";
  keyedList(
    list,
    slots,
    `${state.visit ? "visit" : "none"}|${slots.map((s) => `${s.key}:${s.label}:${s.starts_at}`).join("|")}`,
    (s) =>
      h(
        "li",
        { class: "slot", "data-slot": s.key },
        h("span", { class: "slot-time", text: when(s.starts_at) }),
        h("span", { class: "slot-label" }, h("b", { text: s.label }), h("small", { text: s.showName || "" })),
        h("span", { class: "seats" }),
        state.visit ? h("button", { type: "button", class: "choose", onclick: () => choose(s.key) }, "Choose") : null,
      ),
    (li, s) => {
      li.classList.toggle("selected", state.selected === s.key);
      seatsInto(li, s.key);
    },
  );
}

/**
 * Draws `items` into `list`: built anew when the items (or what they are built from, `structure`) changed, else
 * updated in place, so a tap that is under way when availability moves is not lost with its button.
 */
function keyedList(list, items, structure, build, update) {
  if (list.dataset.structure !== structure || list.children.length !== items.length) {
    list.replaceChildren(...items.map(build));
    list.dataset.structure = structure;
  }
  items.forEach((item, i) => update(list.children[i], item));
}

/** The seats line and the Choose button of a row or card, from the live availability. */
function seatsInto(el, key) {
  const seats = seatsText(key);
  const line = el.querySelector(".seats");
  line.textContent = seats.text;
  line.className = `seats ${seats.cls}`;
  const button = el.querySelector("button.choose");
  if (button) button.disabled = !(state.visit && state.online === true && seats.n > 0);
}

function renderBooking() {
  const box = $("booking");
  const key = state.selected;
  const c = state.confirmation;
  const conf = $("confirmation");
  conf.hidden = !c;
  if (c) {
    $("confirmation-text").textContent = `${seatsWord(c.seats)} for ${c.label}${c.starts_at ? ` at ${when(c.starts_at)}` : ""}`;
    $("confirmation-id").textContent = `Booking ${c.booking_id}. Your pass is your ticket.`;
  }
  const err = $("book-error");
  err.hidden = !state.bookError;
  err.textContent = state.bookError || "";
  if (!key || !state.visit) {
    box.hidden = !state.bookError;
    $("booking-form").hidden = true;
    return;
  }
  box.hidden = false;
  $("booking-form").hidden = false;
  const info = slotInfo(key) || { label: key, starts_at: null };
  $("booking-what").textContent = `${info.label}${info.starts_at ? ` · ${when(info.starts_at)}` : ""}`;
  const max = seatsMax();
  if (state.seats > max && max > 0) state.seats = max;
  $("seats-count").textContent = String(state.seats);
  $("seats-less").disabled = state.seats <= 1;
  $("seats-more").disabled = state.seats >= max;
  const offline = state.online !== true;
  const bookButton = $("book-button");
  bookButton.disabled = offline || state.booking || max < 1;
  bookButton.textContent = state.booking ? "Booking…" : `Book ${seatsWord(state.seats)}`;
  $("book-offline").hidden = !offline;
  const g = groupSize();
  $("seats-hint").textContent = g > 1 && state.seats !== g ? `Your group is ${g}.` : max < 1 ? "No seats left here for this slot." : "";
}

function renderSuggestions() {
  const box = $("suggestion-list");
  const note = $("suggestions-state");
  if (state.online === false) {
    shownNow = [];
    box.replaceChildren();
    box.dataset.structure = "";
    note.hidden = false;
    note.textContent = "Suggestions are back when the site network is.";
    return;
  }
  const picked = pickSuggestions();
  shownNow = picked;
  note.hidden = picked.length > 0;
  note.textContent = state.suggestions ? "Nothing to suggest right now." : "Finding suggestions…";
  keyedList(
    box,
    picked,
    `${state.visit ? "visit" : "none"}|${picked.map((x) => `${x.key}:${x.label}:${x.starts_at}:${x.reason}`).join("|")}`,
    (x) =>
      h(
        "li",
        { class: "suggestion", "data-slot": x.key },
        h("div", { class: "suggestion-head" }, h("b", { text: x.label }), h("span", { class: "slot-time", text: when(x.starts_at) })),
        h("p", { class: "reason" }, h("span", { class: "why", text: "Why this? " }), x.reason),
        h("div", { class: "suggestion-foot" }, h("span", { class: "seats" }), state.visit ? h("button", { type: "button", class: "choose", onclick: () => choose(x.key) }, "Choose") : null),
      ),
    (li, x) => seatsInto(li, x.key),
  );
  if (state.visit) {
    const keys = new Set(state.visit.suggested || []);
    for (const x of picked) keys.add(x.key);
    if (keys.size !== (state.visit.suggested || []).length) {
      state.visit.suggested = [...keys];
      saveVisit();
    }
    reportShown();
  }
}

// ----- camera scanning, where the browser can -----

let scanning = null;

async function scan() {
  if (scanning) return stopScan();
  const box = $("scanner");
  let stream;
  try {
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
    const video = $("scanner-video");
    video.srcObject = stream;
    await video.play();
    box.hidden = false;
    scanning = { stream, timer: null };
    const tick = async () => {
      if (!scanning) return;
      try {
        const codes = await detector.detect(video);
        const hit = codes.map((c) => c.rawValue).find((t) => t && t.trim());
        if (hit) {
          stopScan();
          $("pass").value = hit.trim();
          checkIn(hit);
          return;
        }
      } catch {
        // a frame that did not decode
      }
      scanning.timer = setTimeout(tick, 250);
    };
    tick();
  } catch (e) {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    state.joinError = "The camera is not available: please type the pass instead.";
    renderJoin();
  }
}

function stopScan() {
  if (!scanning) return;
  clearTimeout(scanning.timer);
  scanning.stream.getTracks().forEach((t) => t.stop());
  scanning = null;
  $("scanner").hidden = true;
}

// ----- wiring -----

let idle = null;
function touched() {
  clearTimeout(idle);
  if (state.visit) idle = setTimeout(() => endVisit("Session ended after a few quiet minutes. Check in again any time."), VISIT_IDLE_MS);
}

function wire() {
  $("zone").textContent = `Zone: ${zone}`;
  if (zoneAsked && zoneAsked !== zone) $("zone").title = `"${zoneAsked}" is not a zone name; showing ${zone}`;
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    checkIn($("pass").value);
  });
  $("scan-button").addEventListener("click", scan);
  $("scanner-cancel").addEventListener("click", stopScan);
  $("seats-less").addEventListener("click", () => {
    state.seats = Math.max(1, state.seats - 1);
    renderBooking();
  });
  $("seats-more").addEventListener("click", () => {
    state.seats = Math.min(seatsMax(), state.seats + 1);
    renderBooking();
  });
  $("book-button").addEventListener("click", book);
  $("book-cancel").addEventListener("click", () => {
    state.selected = null;
    state.bookError = null;
    renderBooking();
    renderSlots();
  });
  $("book-another").addEventListener("click", () => {
    state.confirmation = null;
    renderBooking();
    $("whats-on").scrollIntoView({ behavior: "smooth", block: "start" });
  });
  $("finish").addEventListener("click", () => endVisit("Enjoy the show! The next person can check in now."));
  $("done-button").addEventListener("click", () => endVisit("Enjoy the show! The next person can check in now."));
  $("forget-button").addEventListener("click", forgetMe);
  $("name-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("first-name").value.trim().slice(0, 40);
    if (!name || !state.visit) return;
    saveProfile(state.visit.subject, { ...profile(), name });
    $("first-name").value = "";
    renderJoin();
  });
  for (const ev of ["pointerdown", "keydown"]) document.addEventListener(ev, touched, { passive: true });
  // A barcode scanner that types (a keyboard wedge) fills the pass field even when nothing has the focus.
  document.addEventListener("keydown", (e) => {
    const free = !document.activeElement || document.activeElement === document.body;
    if (free && !state.visit && e.key.length === 1 && !e.ctrlKey && !e.metaKey && !e.altKey && !$("pass").disabled) $("pass").focus();
  });
  window.addEventListener("offline", () => wentOffline());
  window.addEventListener("online", () => probe());
}

async function main() {
  const site = load(localStorage, SITE_KEY);
  if (typeof site === "string") {
    state.site = site;
    $("site-name").textContent = site;
  }
  wire();
  renderAll();
  renderSaved();
  touched();
  startWorker();
  // Status first: the site's name, and whether the node answers at all.
  const s = await attempt(() => api(op("status"), { timeout: 4000 }), null);
  if (s) cameBack(s.data);
  else {
    await Promise.all([loadGallery(), loadShows()]);
    renderAll();
  }
  setInterval(() => {
    if (state.online !== true || state.streamUp) return;
    loadAvailability(allSlots().map((x) => x.key));
    if (!state.stream) follow(true);
  }, POLL_FALLBACK_MS);
  setInterval(() => {
    if (state.online === true) loadAvailability(allSlots().map((x) => x.key));
  }, POLL_LIVE_MS);
  // Between attendees the suggestions move with the node's ranking; during a visit they change on what the
  // attendee does (check-in, answers, a booking), so one visit is not counted as shown again and again.
  setInterval(() => {
    if (state.online === true && !state.visit && Date.now() - state.suggestionsAt >= SUGGEST_EVERY_MS) loadSuggestions();
  }, 5000);
}

main();
