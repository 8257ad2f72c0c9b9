// The anchor for popmesh's mesh benchmarks: the automerge-repo JS sync server relaying one document between two
// clients over its WebSocket adapter, measured the way `cargo bench -p popmesh-node --bench mesh` measures popmesh.
//
//   npm install && node anchor.mjs   (npm 11 refuses `npm ci` on this lock: optional builds of cbor-extract)
//
// Write-to-visible: client A changes the document; the clock stops when client B's handle reports the change.
// Writes are sequential. Bulk: A makes changes back to back; the rate is changes over the time until B has the last.
import { Repo } from "@automerge/automerge-repo";
import {
  NodeWSServerAdapter,
  BrowserWebSocketClientAdapter,
} from "@automerge/automerge-repo-network-websocket";
import { WebSocketServer } from "ws";

const PORT = Number(process.env.ANCHOR_PORT ?? 38_917);
const WRITES = Number(process.env.ANCHOR_WRITES ?? 300);
const BULK = Number(process.env.ANCHOR_BULK ?? 4_000);

const wss = new WebSocketServer({ port: PORT });
const server = new Repo({ network: [new NodeWSServerAdapter(wss)], sharePolicy: async () => true });
const a = new Repo({ network: [new BrowserWebSocketClientAdapter(`ws://127.0.0.1:${PORT}`)] });
const b = new Repo({ network: [new BrowserWebSocketClientAdapter(`ws://127.0.0.1:${PORT}`)] });

const ha = a.create({ n: -1 });
await new Promise((r) => setTimeout(r, 500));
const hb = await b.find(ha.url);
await hb.whenReady?.();

function seen(value) {
  return new Promise((resolve) => {
    const check = () => {
      if (hb.doc()?.n === value) {
        hb.off("change", check);
        resolve(performance.now());
        return true;
      }
      return false;
    };
    if (!check()) hb.on("change", check);
  });
}

const q = (s, p) => s[Math.min(s.length - 1, Math.round((s.length - 1) * p))];
const samples = [];
for (let i = 0; i < WRITES; i++) {
  const t0 = performance.now();
  const visible = seen(i);
  ha.change((d) => {
    d.n = i;
  });
  const t1 = await visible;
  if (i >= 20) samples.push(t1 - t0);
}
samples.sort((x, y) => x - y);
console.log(
  `anchor latency writes=${samples.length}: write-to-visible p50 ${q(samples, 0.5).toFixed(2)} ms p99 ${q(samples, 0.99).toFixed(2)} ms max ${q(samples, 1).toFixed(2)} ms`,
);

const start = performance.now();
const last = WRITES + BULK;
const done = seen(last);
for (let i = WRITES + 1; i <= last; i++) {
  ha.change((d) => {
    d.n = i;
  });
}
const end = await done;
const secs = (end - start) / 1000;
console.log(`anchor bulk changes=${BULK}: all visible on the other client after ${secs.toFixed(2)} s = ${(BULK / secs).toFixed(0)} changes/s`);

// The same, yielding to the event loop between changes, as changes that arrive as separate requests would.
{
  const first = WRITES + BULK + 1;
  const last2 = first + BULK - 1;
  const start2 = performance.now();
  const done2 = seen(last2);
  for (let i = first; i <= last2; i++) {
    ha.change((d) => {
      d.n = i;
    });
    await new Promise((r) => setImmediate(r));
  }
  const end2 = await done2;
  const secs2 = (end2 - start2) / 1000;
  console.log(`anchor paced changes=${BULK} (one per event-loop turn): all visible after ${secs2.toFixed(2)} s = ${(BULK / secs2).toFixed(0)} changes/s`);
}

a.shutdown?.();
b.shutdown?.();
server.shutdown?.();
wss.close();
setTimeout(() => process.exit(0), 200);
