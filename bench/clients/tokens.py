#!/usr/bin/env python3
"""What client tokens and TLS cost a payment: p50/p99 of POST /v1/payments (answered once fsync'd) on one node,
keep-alive clients, three ways in alternating rounds of the same run: loopback without a token, loopback with a
pos client token (an ed25519 check against the directory per request), and TLS with the same token (the
certificate pinned by its SHA-256, as a paired tablet does).

    python3 bench/clients/tokens.py [--binary target/release/popmesh] [--rounds 10] [--per-round 100]
"""
import argparse, hashlib, http.client, json, os, shutil, socket, ssl, statistics, subprocess, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/popmesh")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=100)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="popmesh-tokens-")
    data = os.path.join(tmp, "edge")
    pm = lambda *a: subprocess.run([args.binary, *a], check=True, capture_output=True, text=True).stdout
    pm("site", "init", "--data", data, "--name", "Bench", "--device-name", "edge-1")
    api, tls, p2p = free_port(), free_port(), free_port()
    cfg = os.path.join(data, "popmesh.toml")
    text = open(cfg).read().replace('# tls_listen = "0.0.0.0:7743"', f'tls_listen = "127.0.0.1:{tls}"')
    # Every payment stays unreconciled in this run: room for all of them under the stored limit.
    text = text.replace("stored_total_max_minor = 200000", "stored_total_max_minor = 100000000")
    open(cfg, "w").write(text)
    node = subprocess.Popen([args.binary, "run", "--data", data, "--api", f"127.0.0.1:{api}", "--listen",
                             f"/ip4/127.0.0.1/tcp/{p2p}", "--no-mdns", "--media-port", "0"],
                            stderr=open(os.path.join(tmp, "log"), "w"))
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
                c.request("GET", "/v1/status")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        show = {"id": "fri", "name": "Bench", "currency": "EUR", "slots": [
            {"id": "s1", "label": "19:00", "starts_at": 1795892400000, "capacity": 10, "grants": {"edge-1": 10}}]}
        c = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
        c.request("POST", "/v1/shows", json.dumps(show), {"Content-Type": "application/json"})
        assert c.getresponse().status == 201, "the show"
        token = json.loads(pm("token", "issue", "--data", data, "--role", "pos", "--json"))["token"]
        pin = json.loads(pm("pair", "--data", data, "--json"))["sha256"]
        plain = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned by hand below, as a paired tablet does
        secure = http.client.HTTPSConnection("127.0.0.1", tls, timeout=10, context=ctx)
        secure.connect()
        got = hashlib.sha256(secure.sock.getpeercert(binary_form=True)).hexdigest()
        assert got == pin, "the TLS listener's certificate is not the paired one"
        ways = {"loopback, no token": (plain, {}),
                "loopback, pos token": (plain, {"Authorization": f"Bearer {token}"}),
                "TLS, pos token": (secure, {"Authorization": f"Bearer {token}"})}
        samples = {w: [] for w in ways}
        n = 0
        for _ in range(args.rounds):
            for way, (conn, headers) in ways.items():
                for _ in range(args.per_round):
                    n += 1
                    body = json.dumps({"amount_minor": 100, "currency": "EUR", "idempotency_key": f"b-{n}"})
                    t = time.perf_counter()
                    conn.request("POST", "/v1/payments", body,
                                 {"Content-Type": "application/json", **headers})
                    r = conn.getresponse()
                    r.read()
                    samples[way].append((time.perf_counter() - t) * 1000)
                    assert r.status == 201, (way, r.status)
        base = statistics.median(samples["loopback, no token"])
        for way, s in samples.items():
            s.sort()
            p50, p99 = statistics.median(s), s[int(len(s) * 0.99) - 1]
            print(f"{way:22s} payments={len(s)} p50 {p50:.2f} ms p99 {p99:.2f} ms ({p50 / base:.2f}x the p50 without a token)")
    finally:
        node.kill()
        node.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
