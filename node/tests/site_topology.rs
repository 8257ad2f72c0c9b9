//! Twelve devices on venue Wi-Fi that blocks multicast, each given nothing but the edge box's address. They learn
//! each other through the mesh and form the site's topology (the hubs plus ring neighbours), not a star around the
//! edge box; each says in `/v1/status` why each link exists. Then the edge box dies: a payment on one POS still
//! reaches every one of the ten other devices.

mod common;

use std::time::{Duration, Instant};

use common::site::{Node, Site, payment, show};

const DEVICES: usize = 12;
/// The most links a kiosk or POS holds: the one hub (the edge box) and two ring neighbours on each side.
const DEGREE_MAX: usize = 1 + 2 * 2;

fn links(node: &Node) -> Vec<serde_json::Value> {
    node.status()["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["admitted"] == true)
        .collect()
}

#[test]
fn twelve_devices_given_only_the_edge_box_form_a_ring_and_survive_its_loss() {
    let site = Site::create("topology");
    let devices: Vec<_> = (1..DEVICES)
        .map(|i| {
            let role = if i % 2 == 0 { "kiosk" } else { "pos" };
            site.join(role, &format!("{role}-{i}"))
        })
        .collect();
    let mut edge = Node::start(&site.edge, &[]);
    let nodes: Vec<Node> = devices
        .iter()
        .map(|d| Node::start(d, &[&site.edge]))
        .collect();
    // Every device enrolls, learns the others' addresses from their telemetry documents, and links to its ring.
    let start = Instant::now();
    loop {
        let degrees: Vec<usize> = nodes.iter().map(|n| links(n).len()).collect();
        let formed = degrees.iter().all(|d| (3..=DEGREE_MAX).contains(d));
        if formed {
            eprintln!(
                "topology formed in {:?}: degrees {degrees:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no ring after 90 s: degrees {degrees:?}\n{}",
            nodes[0].log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each link says why it exists.
    for n in &nodes {
        for p in links(n) {
            let why = p["why"].as_str().unwrap_or("");
            assert!(
                ["planned", "bootstrap", "their_plan"].contains(&why),
                "{}: link without a reason: {p}",
                n.device.name
            );
        }
    }
    assert_eq!(
        edge.post("/v1/shows", show("fri", 10, &[])).status,
        201,
        "the edge box opens the show"
    );
    for n in &nodes {
        n.wait_for("the show", Duration::from_secs(30), |n| {
            n.get("/v1/shows")["shows"]["fri"].is_object()
        });
    }
    edge.kill();
    // The edge box is gone: a payment on pos-1 reaches every other device through the ring.
    let pos = &nodes[0];
    let paid = pos.post("/v1/payments", payment("after-the-edge", 900));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let start = Instant::now();
    for n in &nodes[1..] {
        n.wait_for("the payment", Duration::from_secs(20), |n| {
            n.receipt_tokens().contains(&token)
        });
    }
    eprintln!(
        "without the edge box the payment reached all {} other devices in {:?}",
        nodes.len() - 1,
        start.elapsed()
    );
    for n in &nodes {
        assert!(
            links(n).len() <= DEGREE_MAX,
            "{}: over the bound",
            n.device.name
        );
    }
}
