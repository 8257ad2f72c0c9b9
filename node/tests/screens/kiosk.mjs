// A kiosk screen, as kiosk web apps are built: automerge-repo 2.5 over its WebSocket client adapter. Driven by
// node/tests/screen_sync.rs against a running popmesh node; prints one JSON line per step.
//
//   node kiosk.mjs ws://127.0.0.1:7700/v1/sync MANIFEST_ID SLOT_ID LEDGER_ID
import { Repo } from "@automerge/automerge-repo";
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const [url, manifestId, slotId, ledgerId] = process.argv.slice(2);
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));
const within = (ms, promise) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms))]);
const sold = (slot) =>
  Object.values(slot.devices ?? {}).reduce(
    (n, d) => n + Object.values(d.sales ?? {}).reduce((m, s) => m + Number(s.seats), 0),
    0,
  );
const until = (handle, test) =>
  new Promise((resolve) => {
    const check = () => {
      const doc = handle.doc();
      if (doc && test(doc)) {
        handle.off("change", check);
        resolve(doc);
        return true;
      }
      return false;
    };
    if (!check()) handle.on("change", check);
  });

const repo = new Repo({ network: [new BrowserWebSocketClientAdapter(url)], peerId: "kiosk-screen-lobby" });
const manifest = await within(15_000, repo.find(`automerge:${manifestId}`));
say("manifest", { entries: Object.keys(manifest.doc().entries ?? {}).sort() });
const slot = await within(15_000, repo.find(`automerge:${slotId}`));
say("slot", { capacity: Number(slot.doc().capacity), sold: sold(slot.doc()) });
say("ready");

// Live: the edge box publishes a new poster and a seat is sold; the screen sees both without asking.
const updated = await within(20_000, until(manifest, (d) => "late-poster.jpg" in (d.entries ?? {})));
say("manifest-updated", { entries: Object.keys(updated.entries).sort() });
const booked = await within(20_000, until(slot, (d) => sold(d) > 0));
say("slot-updated", { sold: sold(booked) });

// A screen cannot write: its changes stay local.
manifest.change((d) => {
  d.fallback = "defaced.jpg";
});
slot.change((d) => {
  d.capacity = 9999;
});
await new Promise((r) => setTimeout(r, 1500));
say("wrote");

// A document a screen must not see (a POS ledger) stays unavailable.
try {
  const ledger = await within(8_000, repo.find(`automerge:${ledgerId}`));
  say("forbidden", { available: true, keys: Object.keys(ledger.doc() ?? {}) });
} catch (e) {
  say("forbidden", { available: false, error: String(e.message ?? e) });
}

// Posing as a site device (a peer id of 64 hex digits) gets the socket closed, and nothing.
const imposter = new Repo({
  network: [new BrowserWebSocketClientAdapter(url)],
  peerId: "ab".repeat(32),
});
try {
  await within(6_000, imposter.find(`automerge:${manifestId}`));
  say("imposter", { available: true });
} catch (e) {
  say("imposter", { available: false, error: String(e.message ?? e) });
}
process.exit(0);
