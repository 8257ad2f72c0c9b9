//! The warehouse under load, against a throwaway PostgreSQL cluster (fsync on), recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p popmesh-node --bench warehouse -- rows 50 20000   rows per second for 50 devices x 20,000 receipts
//! cargo bench -p popmesh-node --bench warehouse -- lag 200         a POS payment to its row in SQL, 200 payments
//! ```
//!
//! `rows` synthesizes the ledgers through the real crdt code (a site directory with 50 enrolled POS terminals,
//! each one's receipts taken with `take_payments_paged` on pages of 1,000, as the node's desks do) instead of
//! running 50 processes, then loads them the way the origin's follower does: every receipt verified against the
//! directory (`warehouse::rows::ledger`), then written by `warehouse::write::rows` in transactions of at most
//! `TXN_ROWS_MAX` rows or `TXN_DOCS_MAX` pages, each with its pages' cursors. Then it writes every row again (a
//! replay) and checks nothing changed. `lag` runs real `popmesh run` processes (edge box, POS, origin) on loopback.

#[path = "../tests/common/site.rs"]
mod site;

#[path = "../tests/common/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use popmesh_crdt::directory::Directory;
use popmesh_crdt::enrollment::SiteAuthority;
use popmesh_crdt::ledger::{EarlierPages, Ledger};
use popmesh_crdt::receipt::PaymentRequest;
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::{Doc, Role, SecretKey, UnixMillis, actor_id};
use popmesh_node::warehouse::{self, rows, write};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("rows");
    let arg = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    match what {
        "rows" => rows_per_second(arg(1, 50), arg(2, 20_000)),
        "lag" => lag(arg(1, 200)),
        other => panic!("unknown benchmark {other:?}: rows DEVICES RECEIPTS | lag PAYMENTS"),
    }
}

const PAGE: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = warehouse::pg_config(url)
        .expect("url")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

fn rows_per_second(devices: usize, receipts: usize) {
    let Some(pg) = pg::Pg::start_with("bench", &[]) else {
        return;
    };
    // The site: an authority, a directory enrolling every POS, and each POS's ledger pages.
    let start = Instant::now();
    let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
    let keys: Vec<SecretKey> = (0..devices)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SecretKey::from_seed(seed)
        })
        .collect();
    let mut directory = Doc::<Directory>::create_site(
        actor_id(keys[0].public(), 0),
        authority.public(),
        "Bench Market",
    )
    .expect("site");
    for (i, k) in keys.iter().enumerate() {
        directory
            .add_device(&authority.enroll(
                k.public(),
                Role::Pos,
                &format!("pos-{i}"),
                UnixMillis(0),
                UnixMillis(u64::MAX / 2),
            ))
            .expect("enroll");
    }
    let view = directory.view().expect("directory view");
    let limits = RiskLimits {
        currency: "EUR".into(),
        payment_max_minor: 1_000_000,
        stored_total_max_minor: u64::MAX / 4,
        stale_after_ms: u64::MAX / 4,
    };
    let site_id = authority.site();
    let pages: Vec<(String, popmesh_crdt::ledger::LedgerView)> = std::thread::scope(|s| {
        let chunks: Vec<&[SecretKey]> = keys.chunks(devices.div_ceil(2).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let limits = limits.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    for key in chunk {
                        let mut earlier = EarlierPages {
                            page_capacity: PAGE,
                            ..EarlierPages::default()
                        };
                        let mut taken = 0;
                        let mut page = 0;
                        while taken < receipts {
                            let mut doc = Doc::<Ledger>::create_ledger(
                                actor_id(key.public(), 0),
                                site_id,
                                "fri",
                                key.public(),
                            )
                            .expect("ledger");
                            let n = PAGE.min(receipts - taken);
                            let requests: Vec<PaymentRequest> = (taken..taken + n)
                                .map(|i| PaymentRequest {
                                    idempotency_key: format!("sale-{i}"),
                                    amount_minor: 100 + (i % 5_000) as u64,
                                    currency: "EUR".into(),
                                    attendee: (i % 3 == 0).then(|| format!("att-{}", i % 997)),
                                })
                                .collect();
                            let outcomes = doc
                                .take_payments_paged(
                                    key,
                                    &limits,
                                    &requests,
                                    &earlier,
                                    0,
                                    UnixMillis(1_795_892_400_000 + taken as u64),
                                )
                                .expect("payments");
                            assert!(outcomes.iter().all(Result::is_ok), "every payment taken");
                            let v = doc.view().expect("page view");
                            earlier.absorb(&v);
                            let name = format!("show/fri/ledger/{}/{page}", key.public().to_hex());
                            out.push((name, v));
                            taken += n;
                            page += 1;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("synth"))
            .collect()
    });
    let synth = start.elapsed();

    // What the follower does per page: verify each receipt, build its rows.
    let start = Instant::now();
    let docs: Vec<(write::Cursor, rows::Rows)> = pages
        .iter()
        .enumerate()
        .map(|(i, (name, page))| {
            let mut verified = rows::Verified::new();
            let r = rows::ledger(page, &view, &mut verified);
            let cursor = write::Cursor {
                doc_id: format!("bench-{i}"),
                doc_name: name.clone(),
                heads: vec![format!("h{i}"), "trust:bench".into()],
            };
            (cursor, r)
        })
        .collect();
    let extract = start.elapsed();
    let total: usize = docs.iter().map(|(_, r)| r.receipts.len()).sum();
    assert_eq!(total, devices * receipts);
    assert!(
        docs.iter()
            .all(|(_, r)| r.receipts.iter().all(|x| x.verified))
    );

    let rt = runtime();
    let url = pg.url();
    let site = site_id.to_hex();
    let origin = keys[0].public().to_hex();
    let load = |docs: &[(write::Cursor, rows::Rows)]| -> (Duration, u64, usize) {
        rt.block_on(async {
            let mut client = connect(&url).await;
            let start = Instant::now();
            let (mut changed, mut txns) = (0u64, 0usize);
            let mut i = 0;
            while i < docs.len() {
                let mut batch = rows::Rows::default();
                let mut cursors = Vec::new();
                while i < docs.len()
                    && cursors.len() < warehouse::TXN_DOCS_MAX
                    && batch.len() < warehouse::TXN_ROWS_MAX
                {
                    batch.append(docs[i].1.clone());
                    cursors.push(docs[i].0.clone());
                    i += 1;
                }
                let tx = client.transaction().await.expect("begin");
                changed += write::rows(&tx, &site, &origin, &mut batch, &cursors)
                    .await
                    .expect("write");
                tx.commit().await.expect("commit");
                txns += 1;
            }
            (start.elapsed(), changed, txns)
        })
    };
    rt.block_on(async {
        let mut client = connect(&url).await;
        warehouse::migrate(&mut client).await.expect("migrate");
    });
    let (first, changed, txns) = load(&docs);
    assert_eq!(changed as usize, total, "every receipt inserted once");
    let (again, unchanged, _) = load(&docs);
    assert_eq!(unchanged, 0, "writing the same facts again changes no row");
    assert_eq!(
        pg.count("SELECT count(*) FROM receipts"),
        total as i64,
        "one row per receipt"
    );
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!(
        "{devices} devices x {receipts} receipts = {total} receipts on {} ledger pages",
        docs.len()
    );
    println!(
        "synthesized through popmesh-crdt in {:.1} s (not part of the figure)",
        synth.as_secs_f64()
    );
    println!(
        "verified and turned into rows: {:.1} s ({:.0} receipts/s)",
        extract.as_secs_f64(),
        rate(extract)
    );
    println!(
        "first load: {:.1} s, {:.0} rows/s, {txns} transactions",
        first.as_secs_f64(),
        rate(first)
    );
    println!(
        "the same rows again (a replay): {:.1} s, {:.0} rows/s, 0 rows changed",
        again.as_secs_f64(),
        rate(again)
    );
    println!(
        "end to end (verify + first load): {:.0} receipts/s",
        total as f64 / (extract + first).as_secs_f64()
    );
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn lag(payments: usize) {
    let Some(pg) = pg::Pg::start_with("lag", &[]) else {
        return;
    };
    let s = site::Site::create("wh-lag");
    let pos = s.join("pos", "pos-1");
    let origin = s.join("origin", "origin-1");
    for d in [&pos, &origin] {
        let path = d.data.join("popmesh.toml");
        let text = std::fs::read_to_string(&path)
            .expect("config")
            .replace(
                "postgres_url = \"\"",
                &format!("postgres_url = {:?}", pg.url()),
            )
            .replace(
                "stored_total_max_minor = 200000",
                "stored_total_max_minor = 100000000000",
            );
        std::fs::write(&path, text).expect("config");
    }
    let (ok, out, err) = site::popmesh(&["warehouse", "migrate", "--data", origin.data_str()]);
    assert!(ok, "{out}{err}");
    let edge = site::Node::start(&s.edge, &[]);
    let pos = site::Node::start(&pos, &[&s.edge]);
    let origin = site::Node::start(&origin, &[&s.edge, &pos.device]);
    pos.wait_for("enrolled", Duration::from_secs(60), |n| {
        n.status()["enrolled"] == true
    });
    assert_eq!(
        edge.post("/v1/shows", site::show("fri", 20, &[])).status,
        201
    );
    pos.wait_for("the show", Duration::from_secs(60), |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    origin.wait_for("the origin connected", Duration::from_secs(60), |n| {
        n.get("/v1/warehouse")["connected"] == true && n.admitted_peers() >= 2
    });
    let rt = runtime();
    let url = pg.url();
    let mut lags: Vec<f64> = rt.block_on(async {
        let client = connect(&url).await;
        let query = client
            .prepare("SELECT 1 FROM receipts WHERE token = $1")
            .await
            .expect("prepare");
        let mut lags = Vec::with_capacity(payments);
        for i in 0..payments {
            let start = Instant::now();
            let answer = pos.post("/v1/payments", site::payment(&format!("lag-{i}"), 500));
            assert_eq!(answer.status, 201, "{}", answer.body);
            let token = answer.json()["receipt"]["token"]
                .as_str()
                .expect("token")
                .to_owned();
            loop {
                if !client
                    .query(&query, &[&token])
                    .await
                    .expect("poll")
                    .is_empty()
                {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "row never arrived"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lags.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        lags
    });
    lags.sort_by(f64::total_cmp);
    println!(
        "payment on the POS (201, fsync'd) to its row in SQL at the origin, {payments} payments one after another: \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile(&lags, 0.5),
        quantile(&lags, 0.9),
        quantile(&lags, 0.99),
        lags[lags.len() - 1]
    );
}
