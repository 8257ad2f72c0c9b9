//! The origin loads the show into PostgreSQL (issue 18): a real throwaway cluster (`common::pg`) and real
//! `popmesh run` processes. A show merged at the origin appears in SQL and its views read what `popmesh report`
//! says; the database stopped mid-show and started again loses and duplicates nothing, across a SIGKILL of the
//! origin; two origins writing the same site at once produce one row per fact.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::pg::Pg;
use common::site::{Device, Node, Site, payment, popmesh, show};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(90);

/// Points a device's `[warehouse]` at the test database (and retries every second).
fn warehouse_at(device: &Device, url: &str) {
    let path = device.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(
        text.contains("postgres_url = \"\""),
        "the template names it"
    );
    let text = text
        .replace("postgres_url = \"\"", &format!("postgres_url = {url:?}"))
        .replace("retry_every_secs = 2", "retry_every_secs = 1")
        .replace(
            "filter = \"info,samod_core=warn,samod=warn\"",
            "filter = \"info,samod_core=warn,samod=warn,popmesh_node::warehouse=debug\"",
        )
        .replace(
            "stored_total_max_minor = 200000",
            "stored_total_max_minor = 10000000",
        );
    std::fs::write(&path, text).expect("config written");
}

fn migrate(device: &Device) -> String {
    let (ok, out, err) = popmesh(&["warehouse", "migrate", "--data", device.data_str()]);
    assert!(ok, "warehouse migrate failed: {out}{err}");
    out
}

fn pay(pos: &Node, key: &str, amount: u64) -> String {
    let answer = pos.post("/v1/payments", payment(key, amount));
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// The origin has written everything it holds.
fn caught_up(origin: &Node) -> bool {
    let w = origin.get("/v1/warehouse");
    w["connected"] == true && w["owed_documents"] == 0 && w["pending_reconciliation_rows"] == 0
}

fn tokens_in_sql(pg: &Pg) -> BTreeSet<String> {
    pg.rows("SELECT token FROM receipts")
        .iter()
        .filter_map(|r| r["token"].as_str().map(str::to_owned))
        .collect()
}

fn check_in(edge: &Node, door: &Node, who: &str, show: &str) {
    let pass = edge.post(
        "/v1/passes",
        json!({ "kind": "attendee", "subject": who, "show": show, "valid_secs": 3600 }),
    );
    assert_eq!(pass.status, 201, "{}", pass.body);
    let admitted = door.post(
        "/v1/check-ins",
        json!({ "pass": pass.json()["pass"], "show": show }),
    );
    assert_eq!(admitted.status, 201, "{}", admitted.body);
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

/// Where the warehouse's views and the origin's report differ (empty when they agree).
fn differences(pg: &Pg, origin: &Node, site: &str, show: &str) -> Vec<String> {
    let report = origin.get(&format!("/v1/report?show={show}"));
    let one = |view: &str, key: &str| -> Value {
        pg.rows(&format!(
            "SELECT * FROM {view} WHERE site_id = '{site}'{key}"
        ))
        .into_iter()
        .next()
        .unwrap_or(Value::Null)
    };
    let by_show = format!(" AND show_id = '{show}'");
    let conversion = one("report_conversion", &by_show);
    let retention = one("report_retention", &by_show);
    let engagement = one("report_engagement", &by_show);
    let operations = one("report_operations", "");
    let totals = one("report_totals", &by_show);
    let mut out = Vec::new();
    let mut compare = |what: &str, sql: &Value, report: &Value| {
        if !close(sql, report) {
            out.push(format!("{what}: SQL {sql}, report {report}"));
        }
    };
    for f in ["checked_in", "converted", "rate", "median_ms", "p90_ms"] {
        compare(f, &conversion[f], &report["conversion"][f]);
    }
    compare(
        "returning",
        &retention["returning_attendees"],
        &report["retention"]["returning"],
    );
    compare(
        "new",
        &retention["new_attendees"],
        &report["retention"]["new"],
    );
    for f in ["returning_conversion", "new_conversion", "lift"] {
        compare(f, &retention[f], &report["retention"][f]);
    }
    for f in ["interactions", "per_attendee", "score"] {
        compare(f, &engagement[f], &report["engagement"][f]);
    }
    for f in ["incidents", "mttr_ms", "uplink_mttr_ms", "open"] {
        compare(f, &operations[f], &report["operations"][f]);
    }
    let outages = |k: &str| Value::from(report["operations"][k].as_array().map_or(0, Vec::len));
    compare("outages", &operations["outages"], &outages("outages"));
    compare(
        "uplink_outages",
        &operations["uplink_outages"],
        &outages("uplink_outages"),
    );
    for f in [
        "capacity",
        "bookings",
        "seats",
        "payments",
        "rejected_receipts",
        "attendee_checkins",
        "staff_checkins",
    ] {
        compare(f, &totals[f], &report["totals"][f]);
    }
    let takings = pg.rows(&format!(
        "SELECT currency, amount_minor, reconciled_minor FROM report_takings WHERE site_id = '{site}'{by_show}"
    ));
    for t in &takings {
        let c = t["currency"].as_str().unwrap_or_default();
        compare(
            &format!("amounts {c}"),
            &t["amount_minor"],
            &report["totals"]["amounts"][c],
        );
        let reconciled = &report["totals"]["reconciled"][c];
        let reconciled = if reconciled.is_null() {
            &Value::from(0)
        } else {
            reconciled
        };
        compare(
            &format!("reconciled {c}"),
            &t["reconciled_minor"],
            reconciled,
        );
    }
    out
}

#[test]
fn a_show_merged_at_the_origin_appears_in_sql_and_the_views_read_what_the_report_says() {
    let Some(pg) = Pg::start("show") else {
        return;
    };
    let site = Site::create("wh-show");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    let origin = site.join("origin", "origin-1");
    warehouse_at(&origin, &pg.url());
    assert!(migrate(&origin).contains("applied migration 2 (report_views)"));
    assert!(
        migrate(&origin).contains("up to date"),
        "a second migrate changes nothing"
    );

    let edge = Node::start(&site.edge, &[]);
    let kiosk_node = Node::start(&kiosk, &[&site.edge]);
    let pos = Node::start(&pos, &[&site.edge]);
    for n in [&kiosk_node, &pos] {
        n.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    }
    // Thursday's preview, then Friday's show.
    let mut thu = show("thu", 10, &[("kiosk-1", 5)]);
    thu["slots"][0]["starts_at"] = json!(1_795_806_000_000u64);
    assert_eq!(edge.post("/v1/shows", thu).status, 201);
    assert_eq!(
        edge.post("/v1/shows", show("fri", 30, &[("kiosk-1", 20)]))
            .status,
        201
    );
    kiosk_node.wait_for("both shows", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
            && n.get("/v1/shows/fri/slots/s1900")["available_here"].as_u64() == Some(20)
    });
    pos.wait_for("both shows", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });

    // Ann and Bo came on Thursday; on Friday Ann and Bo come back, Cy and Dee are new.
    for who in ["att-ann", "att-bo"] {
        check_in(&edge, &kiosk_node, who, "thu");
    }
    for who in ["att-ann", "att-bo", "att-cy", "att-dee"] {
        check_in(&edge, &kiosk_node, who, "fri");
    }
    std::thread::sleep(Duration::from_millis(1_100));
    for (who, id) in [("att-ann", "bk-ann"), ("att-cy", "bk-cy")] {
        let booked = kiosk_node.post(
            "/v1/shows/fri/slots/s1900/bookings",
            json!({ "seats": 2, "booking_id": id, "attendee": who }),
        );
        assert_eq!(booked.status, 201, "{}", booked.body);
    }
    // The kiosk hands three of its seats to the POS terminal.
    let moved = kiosk_node.post(
        "/v1/shows/fri/slots/s1900/transfers",
        json!({ "to": "pos-1", "seats": 3 }),
    );
    assert_eq!(moved.status, 201, "{}", moved.body);
    let bo = pos.post(
        "/v1/payments",
        json!({ "amount_minor": 1500, "currency": "EUR", "idempotency_key": "merch-bo", "attendee": "att-bo" }),
    );
    assert_eq!(bo.status, 201, "{}", bo.body);
    let bo = bo.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let door = pay(&pos, "door-1", 1250);
    let bar = pay(&pos, "bar-1", 990);
    for i in 0..30 {
        let counter = if i % 10 == 0 {
            "purchase.merch"
        } else {
            "screen.tap"
        };
        let a = kiosk_node.post("/v1/telemetry", json!({ "counter": counter }));
        assert_eq!(a.status, 202, "{}", a.body);
    }
    // The kiosk drops off the site for a few seconds: an outage the edge box and the POS record.
    let mut kiosk_node = kiosk_node;
    edge.wait_for("the kiosk's taps flushed and synced", SYNC, |n| {
        n.get("/v1/telemetry")["counters"]["screen.tap"] == 27
    });
    kiosk_node.kill();
    std::thread::sleep(Duration::from_secs(4));
    let kiosk_node = Node::start(&kiosk, &[&site.edge]);
    edge.wait_for("the outage over", SYNC, |n| {
        n.metric("popmesh_incidents_open") == 0.0
            && n.get("/v1/console")["operations"]["mttr_ms"].is_u64()
    });

    // The origin joins late over the WAN and writes the show into the warehouse as it merges it.
    let origin = Node::start(&origin, &[&site.edge]);
    let site_id = origin.status()["site"]
        .as_str()
        .expect("site id")
        .to_owned();
    origin.wait_for("the show merged", SYNC, |n| {
        n.receipt_tokens().len() == 3
            && n.get("/v1/shows/fri/slots/s1900")["sold"] == 4
            && n.get("/v1/telemetry")["counters"]["screen.tap"] == 27
    });
    pg.wait_for("the show in SQL", SYNC, |pg| {
        pg.count("SELECT count(*) FROM receipts") == 3
            && pg.count("SELECT count(*) FROM checkins") == 6
            && pg.count("SELECT count(*) FROM bookings") == 2
            && pg.count("SELECT coalesce(sum(value), 0) FROM telemetry_counters WHERE counter = 'screen.tap'") == 27
    });
    origin.wait_for("the warehouse caught up", SYNC, caught_up);
    assert_eq!(
        tokens_in_sql(&pg),
        origin.receipt_tokens().into_iter().collect(),
        "every receipt the origin merged, once"
    );
    assert_eq!(
        pg.count(
            "SELECT count(*) FROM receipts WHERE verified AND site_id = '{site_id}'"
                .replace("{site_id}", &site_id)
                .as_str()
        ),
        3
    );
    let sites = pg.rows("SELECT site_id, name FROM sites");
    assert_eq!(
        sites,
        vec![json!({ "site_id": site_id, "name": "Harbour Market" })]
    );
    assert_eq!(pg.count("SELECT count(*) FROM devices"), 4);
    assert_eq!(pg.count("SELECT count(*) FROM shows"), 2);
    assert_eq!(pg.count("SELECT count(*) FROM slots"), 2);
    assert_eq!(
        pg.rows("SELECT booking_id, seats, attendee FROM bookings ORDER BY booking_id"),
        vec![
            json!({ "booking_id": "bk-ann", "seats": 2, "attendee": "att-ann" }),
            json!({ "booking_id": "bk-cy", "seats": 2, "attendee": "att-cy" }),
        ]
    );
    assert_eq!(
        pg.count("SELECT sum(value) FROM telemetry_counters WHERE counter = 'screen.tap'"),
        27
    );
    let pos_id = pos.status()["device"].as_str().expect("id").to_owned();
    let kiosk_id = kiosk.device_id();
    // (The rebalancer may move seats of its own accord too; this is the one the kiosk was asked for.)
    assert_eq!(
        pg.rows(&format!(
            "SELECT from_device, seats FROM transfers WHERE to_device = '{pos_id}'"
        )),
        vec![json!({ "from_device": kiosk_id, "seats": 3 })]
    );
    assert_eq!(
        pg.rows("SELECT device_id, seats FROM slot_grants WHERE show_id = 'fri'"),
        vec![json!({ "device_id": kiosk_id, "seats": 20 })]
    );
    // The origin confirms the check-ins it merged (retiring their passes), and that reaches SQL too.
    pg.wait_for("the origin's confirmations", SYNC, |pg| {
        pg.count("SELECT count(*) FROM pass_confirmations") == 6
    });
    assert!(pg.count("SELECT count(*) FROM incidents WHERE resolved_ms IS NOT NULL") >= 1);
    assert_eq!(
        pg.count("SELECT count(*) FROM document_cursors WHERE doc_name LIKE 'show/fri/ledger/%'"),
        1
    );

    // Finance reconciles: the door sale settled, the bar sale for less, Bo's merch declined.
    let csv = format!(
        "token,amount,currency,status\n{door},12.50,EUR,settled\n{bar},9.00,EUR,settled\n{bo},15.00,EUR,declined\n"
    );
    let file = site.root().join("batch-fri.csv");
    std::fs::write(&file, csv).expect("batch");
    let (ok, out, err) = popmesh(&[
        "reconcile",
        "--data",
        origin.device.data_str(),
        "--api",
        &origin.device.api.to_string(),
        "--settlement",
        file.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{out}{err}");
    pg.wait_for("each receipt's outcome", SYNC, |pg| {
        pg.rows("SELECT token, outcome, batch FROM receipt_outcomes ORDER BY outcome")
            == vec![
                json!({ "token": bar, "outcome": "amount_mismatch", "batch": "batch-fri.csv" }),
                json!({ "token": bo, "outcome": "declined", "batch": "batch-fri.csv" }),
                json!({ "token": door, "outcome": "matched", "batch": "batch-fri.csv" }),
            ]
    });
    assert_eq!(
        pg.rows("SELECT matched, exceptions, clean FROM reconciliation_batches"),
        vec![json!({ "matched": 1, "exceptions": 2, "clean": false })]
    );

    // The views read what the report says, once the warehouse holds what the origin holds.
    origin.wait_for("the warehouse caught up", SYNC, caught_up);
    let start = Instant::now();
    let mut diff = differences(&pg, &origin, &site_id, "fri");
    while !diff.is_empty() && start.elapsed() < SYNC {
        std::thread::sleep(Duration::from_millis(500));
        diff = differences(&pg, &origin, &site_id, "fri");
    }
    assert!(
        diff.is_empty(),
        "the views and the report differ: {diff:#?}"
    );
    let report = origin.get("/v1/report?show=fri");
    assert_eq!(report["retention"]["returning"], 2, "Ann and Bo came back");
    assert_eq!(
        report["conversion"]["converted"], 3,
        "Ann, Bo and Cy bought"
    );
    assert!(
        report["operations"]["mttr_ms"].as_u64().is_some(),
        "an outage ended"
    );
    assert!(differences(&pg, &origin, &site_id, "thu").is_empty());

    // Writing every fact again changes nothing: a replay rewrites the cursors and no row (an UPDATE, even to the
    // same values, would give a row a new xmin).
    let versions = |pg: &Pg| {
        pg.rows(
            "SELECT 'receipt ' || token AS fact, xmin::text AS v FROM receipts
             UNION ALL SELECT 'booking ' || booking_id, xmin::text FROM bookings
             UNION ALL SELECT 'checkin ' || pass_id, xmin::text FROM checkins
             UNION ALL SELECT 'slot ' || slot_id, xmin::text FROM slots
             UNION ALL SELECT 'device ' || device_id, xmin::text FROM devices
             UNION ALL SELECT 'batch ' || batch, xmin::text FROM reconciliation_batches
             ORDER BY 1",
        )
    };
    let before = versions(&pg);
    let asked = pg.rows("SELECT now()::text AS asked")[0]["asked"]
        .as_str()
        .expect("now")
        .to_owned();
    let (ok, out, err) = popmesh(&[
        "warehouse",
        "replay",
        "--data",
        origin.device.data_str(),
        "--api",
        &origin.device.api.to_string(),
    ]);
    assert!(ok, "{out}{err}");
    let cursors = pg.count("SELECT count(*) FROM document_cursors");
    pg.wait_for("every cursor written again", SYNC, |pg| {
        pg.count(&format!(
            "SELECT count(*) FROM document_cursors WHERE loaded_at > '{asked}'::timestamptz"
        )) >= cursors
    });
    origin.wait_for("the replay done", SYNC, caught_up);
    assert_eq!(versions(&pg), before, "no row was written twice");

    let (ok, out, err) = popmesh(&[
        "warehouse",
        "status",
        "--data",
        origin.device.data_str(),
        "--api",
        &origin.device.api.to_string(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("schema version 2 (up to date)"), "{out}");
    assert!(out.contains("site \"Harbour Market\""), "{out}");
    assert!(
        out.contains("this origin: connected; owes 0 documents"),
        "{out}"
    );
    drop(kiosk_node);
}

#[test]
fn the_database_stopped_mid_show_and_started_again_loses_and_duplicates_nothing() {
    let Some(mut pg) = Pg::start("outage") else {
        return;
    };
    let site = Site::create("wh-outage");
    let pos = site.join("pos", "pos-1");
    let origin_dev = site.join("origin", "origin-1");
    warehouse_at(&pos, "");
    warehouse_at(&origin_dev, &pg.url());
    migrate(&origin_dev);
    let edge = Node::start(&site.edge, &[]);
    let pos = Node::start(&pos, &[&site.edge]);
    let mut origin = Node::start(&origin_dev, &[&site.edge]);
    pos.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    assert_eq!(edge.post("/v1/shows", show("fri", 20, &[])).status, 201);
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let sell = |from: usize, to: usize, taken: &mut BTreeSet<String>| {
        for i in from..to {
            taken.insert(pay(&pos, &format!("sale-{i}"), 100 + i as u64));
        }
    };
    sell(0, 20, &mut taken);
    pg.wait_for("the first sales in SQL", SYNC, |pg| {
        pg.count("SELECT count(*) FROM receipts") == 20
    });

    // The database goes down mid-show. The site keeps selling; the origin owes, and says so.
    pg.stop();
    let start = Instant::now();
    sell(20, 60, &mut taken);
    let selling = start.elapsed();
    origin.wait_for("the origin to owe the warehouse", SYNC, |n| {
        let w = n.get("/v1/warehouse");
        w["connected"] == false
            && w["owed_documents"].as_u64().is_some_and(|o| o > 0)
            && n.metric("popmesh_warehouse_owed_documents") > 0.0
            && n.metric("popmesh_warehouse_connected") == 0.0
    });
    let console = origin.get("/v1/console");
    assert_eq!(console["warehouse"]["connected"], false, "{console}");
    assert!(
        console["warehouse"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{console}"
    );

    // The origin is killed while it owes, and comes back still owing: the queue is in its own store. The queue is
    // saved at most once a second (by design: a reconnect compares every document anyway), so the test waits until
    // it has stopped growing for longer than that, when what is saved is what is queued.
    let queued_now = |n: &Node| {
        n.get("/v1/warehouse")["queued_documents"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut queued = queued_now(&origin);
    loop {
        std::thread::sleep(Duration::from_millis(1_500));
        let again = queued_now(&origin);
        if again == queued {
            break;
        }
        queued = again;
    }
    assert!(queued > 0, "{}", origin.get("/v1/warehouse"));
    origin.kill();
    let mut origin2 = Node::start(&origin_dev, &[&site.edge]);
    let after = origin2.get("/v1/warehouse");
    assert!(
        after["queued_documents"].as_u64().unwrap_or(0) >= queued,
        "the {queued} queued documents survive a SIGKILL: {after}"
    );
    sell(60, 80, &mut taken);
    origin2.wait_for("every sale merged", SYNC, |n| {
        n.receipt_tokens().len() == 80
    });

    // The database is back: the origin catches up.
    pg.start_again();
    pg.wait_for("every sale in SQL", SYNC, |pg| {
        pg.count("SELECT count(*) FROM receipts") == 80
    });
    origin2.wait_for("the warehouse caught up", SYNC, caught_up);
    assert_eq!(tokens_in_sql(&pg), taken, "no receipt lost, none extra");

    // A burst, and the origin is killed mid-write: nothing lost, nothing twice.
    sell(80, 280, &mut taken);
    origin2.wait_for("some of the burst written", SYNC, |_| {
        pg.count("SELECT count(*) FROM receipts") > 80
    });
    origin2.kill();
    origin = Node::start(&origin_dev, &[&site.edge]);
    pg.wait_for("the whole burst in SQL", SYNC, |pg| {
        pg.count("SELECT count(*) FROM receipts") == 280
    });
    origin.wait_for("the warehouse caught up", SYNC, caught_up);
    assert_eq!(tokens_in_sql(&pg), taken, "no receipt lost, none extra");
    assert_eq!(
        pg.count("SELECT sum(amount_minor) FROM receipts"),
        (0..280).map(|i| 100 + i).sum::<i64>()
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM receipts WHERE NOT verified"),
        0
    );
    println!(
        "40 payments while the database was down took {selling:?} (not asserted: speed goes in BENCHMARKS.md)"
    );
}

#[test]
fn two_origins_writing_the_same_site_at_once_produce_one_row_per_fact() {
    let Some(pg) = Pg::start("two") else {
        return;
    };
    let site = Site::create("wh-two");
    let pos = site.join("pos", "pos-1");
    let first = site.join("origin", "origin-1");
    let second = site.join("origin", "origin-2");
    for o in [&first, &second] {
        warehouse_at(o, &pg.url());
    }
    // Both migrate at once: the advisory lock lets one apply the schema and the other find it current.
    let outs: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| migrate(&first));
        let b = s.spawn(|| migrate(&second));
        vec![a.join().expect("a"), b.join().expect("b")]
    });
    assert_eq!(
        outs.iter()
            .filter(|o| o.contains("applied migration 1"))
            .count(),
        1,
        "{outs:?}"
    );
    let edge = Node::start(&site.edge, &[]);
    let pos = Node::start(&pos, &[&site.edge]);
    pos.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    assert_eq!(
        edge.post("/v1/shows", show("fri", 40, &[("edge-1", 40)]))
            .status,
        201
    );
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    for i in 0..150 {
        pay(&pos, &format!("sale-{i}"), 250);
    }
    for i in 0..12 {
        let b = edge.post(
            "/v1/shows/fri/slots/s1900/bookings",
            json!({ "seats": 1, "booking_id": format!("bk-{i}") }),
        );
        assert_eq!(b.status, 201, "{}", b.body);
    }

    // Two origins come up together and merge the same show at the same moment.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Node::start(&first, &[&site.edge]));
        let b = s.spawn(|| Node::start(&second, &[&site.edge]));
        (a.join().expect("a"), b.join().expect("b"))
    });
    for o in [&a, &b] {
        o.wait_for("the show merged", SYNC, |n| n.receipt_tokens().len() == 150);
    }
    pg.wait_for("the show in SQL", SYNC, |pg| {
        pg.count("SELECT count(*) FROM receipts") == 150
            && pg.count("SELECT count(*) FROM bookings") == 12
    });
    for o in [&a, &b] {
        o.wait_for("its warehouse writes done", SYNC, caught_up);
    }
    assert_eq!(pg.count("SELECT count(DISTINCT token) FROM receipts"), 150);
    assert_eq!(
        pg.count("SELECT sum(amount_minor) FROM receipts"),
        150 * 250
    );
    assert_eq!(pg.count("SELECT count(*) FROM bookings"), 12);
    assert_eq!(pg.count("SELECT count(*) FROM shows"), 1);
    assert_eq!(pg.count("SELECT count(*) FROM slots"), 1);
    assert_eq!(pg.count("SELECT count(*) FROM devices"), 4);
    assert_eq!(pg.count("SELECT count(*) FROM sites"), 1);
    // Both wrote the same documents (each keeps its own cursors), and neither met a conflict it had to retry.
    let per_origin = pg.rows(
        "SELECT origin_device, count(*) AS docs FROM document_cursors
         WHERE doc_name LIKE 'show/fri/%' GROUP BY 1",
    );
    assert_eq!(per_origin.len(), 2, "{per_origin:?}");
    assert_eq!(
        per_origin[0]["docs"], per_origin[1]["docs"],
        "{per_origin:?}"
    );
    for o in [&a, &b] {
        assert_eq!(o.metric("popmesh_warehouse_failures"), 0.0);
    }
    let written =
        a.metric("popmesh_warehouse_rows_written") + b.metric("popmesh_warehouse_rows_written");
    assert!(
        written >= 162.0,
        "together they wrote every fact ({written} rows inserted or changed)"
    );
}
