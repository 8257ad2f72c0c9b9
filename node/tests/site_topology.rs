//! Twenty devices on venue Wi-Fi that blocks multicast, each given nothing but the edge box's address. They learn
//! each other through the mesh and form the site's shape (`popmesh_device::topology`): the edge box and two elected
//! kiosks or POS terminals relay, every other device links to two relays and one ring neighbour a side, and no
//! device holds more links than its part's bound; the edge box is not a star. Each link says why it exists. A
//! booking reaches all twenty devices; a payment reaches every relay, and a kiosk that is no relay does not hold
//! another device's receipts. Then the edge box dies: a booking still reaches the other nineteen and a payment the
//! relays left. Then every relay dies: a booking still goes round the members' ring to all of them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::site::{Node, Site, payment, show};
use popmesh_crdt::{DeviceId, Role};
use popmesh_device::topology::Topology;
use serde_json::json;

const DEVICES: usize = 20;
const SYNC: Duration = Duration::from_secs(45);

fn sold(node: &Node) -> u64 {
    node.get("/v1/shows/fri/slots/s1900")["sold"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn twenty_devices_given_only_the_edge_box_form_relays_within_bounds_and_survive_its_loss() {
    let site = Site::create("topology");
    let roles: Vec<&str> = (1..DEVICES)
        .map(|i| if i % 2 == 0 { "kiosk" } else { "pos" })
        .collect();
    let devices: Vec<_> = roles
        .iter()
        .enumerate()
        .map(|(i, role)| site.join(role, &format!("{role}-{}", i + 1)))
        .collect();
    let mut edge = Node::start(&site.edge, &[]);
    let nodes: Vec<Node> = devices
        .iter()
        .map(|d| Node::start(d, &[&site.edge]))
        .collect();
    let everyone: Vec<&Node> = std::iter::once(&edge).chain(&nodes).collect();

    // The shape every device computes from the directory, computed here from the same ids and roles.
    let ids: Vec<(DeviceId, Role)> = everyone
        .iter()
        .zip(std::iter::once("edge").chain(roles.iter().copied()))
        .map(|(n, role)| {
            let id = n.status()["device"]
                .as_str()
                .expect("a device id")
                .to_owned();
            (
                DeviceId::from_hex(&id).expect("a device id"),
                role.parse().expect("a role"),
            )
        })
        .collect();
    let shape = Topology::of(&ids);
    assert!(shape.within_bounds());
    let plan: BTreeMap<String, BTreeSet<String>> = ids
        .iter()
        .map(|(d, _)| {
            let links = shape.links(d).iter().map(|p| p.to_hex()).collect();
            (d.to_hex(), links)
        })
        .collect();
    let hex: Vec<String> = ids.iter().map(|(d, _)| d.to_hex()).collect();

    // Every device enrolls, learns the others' addresses from their telemetry documents, links to what the
    // shape names and lets go of the rest (the bootstrap link to the edge box too, unless the shape names it).
    let start = Instant::now();
    loop {
        let held: Vec<BTreeSet<String>> = everyone.iter().map(|n| n.linked_devices()).collect();
        let off: Vec<String> = held
            .iter()
            .zip(&everyone)
            .zip(&hex)
            .filter(|((links, _), id)| **links != plan[*id])
            .map(|((links, n), id)| {
                format!(
                    "{} holds {} links, plans {}",
                    n.device.name,
                    links.len(),
                    plan[id].len()
                )
            })
            .collect();
        if off.is_empty() {
            let degrees: Vec<usize> = held.iter().map(BTreeSet::len).collect();
            eprintln!(
                "the shape formed in {:?}: degrees {degrees:?}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "the shape did not form in 150 s: {off:?}\n{}",
            nodes[0].log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each device knows its part and bound; each link says why it exists; the edge box is no star.
    let mut relays = Vec::new();
    for n in &everyone {
        let status = n.status();
        let part = status["part"].as_str().unwrap_or("").to_owned();
        let max = status["links_max"].as_u64().expect("a bound") as usize;
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        assert!(
            peers.len() <= max,
            "{}: {} links over {max}",
            n.device.name,
            peers.len()
        );
        for p in &peers {
            let why = p["why"].as_str().unwrap_or("");
            assert!(
                ["planned", "their_plan"].contains(&why),
                "{}: a link that is not in the shape: {p}",
                n.device.name
            );
        }
        assert!(["relay", "member"].contains(&part.as_str()), "{status}");
        if part == "relay" {
            relays.push(n.device.name.clone());
        }
    }
    assert_eq!(
        relays.len(),
        3,
        "the edge box and two elected devices relay"
    );
    assert!(
        edge.linked_devices().len() < DEVICES - 1,
        "the edge box is a star"
    );

    // Ten seats each to kiosk-2 and kiosk-4, one to every other device (so each can sell with no relay left).
    let grants: Vec<(String, u64)> = devices
        .iter()
        .map(|d| {
            let seats = if ["kiosk-2", "kiosk-4"].contains(&d.name.as_str()) {
                10
            } else {
                1
            };
            (d.name.clone(), seats)
        })
        .collect();
    let grants: Vec<(&str, u64)> = grants.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    assert_eq!(
        edge.post("/v1/shows", show("fri", 40, &grants)).status,
        201,
        "the edge box opens the show"
    );
    for n in &everyone {
        n.wait_for("the show's slot", SYNC, |n| {
            n.client()
                .get("/v1/shows/fri/slots/s1900")
                .is_ok_and(|a| a.status == 200)
        });
    }
    // A kiosk sells two seats: the sale reaches every device.
    let kiosk = &nodes[1];
    let booked = kiosk.post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 2, "booking_id": "twenty-devices" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    let start = Instant::now();
    for n in &everyone {
        n.wait_for("the kiosk's booking", SYNC, |n| sold(n) == 2);
    }
    eprintln!(
        "the booking reached all {DEVICES} devices in {:?}",
        start.elapsed()
    );

    // A POS takes a payment: every relay holds the receipt; a member it does not link to never opens it.
    let pos = &nodes[0];
    let paid = pos.post("/v1/payments", payment("pos-1-0001", 900));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let is_relay = |n: &Node| relays.contains(&n.device.name);
    for r in everyone.iter().filter(|n| is_relay(n)) {
        r.wait_for("the payment on a relay", SYNC, |n| {
            n.receipt_tokens().contains(&token)
        });
    }
    // Kiosks that are no relay: the shared documents and their own, not another device's receipts.
    let bystanders: Vec<&&Node> = everyone
        .iter()
        .filter(|n| !is_relay(n) && n.device.name != pos.device.name)
        .collect();
    assert!(bystanders.len() >= 10, "most devices are members");
    for n in &bystanders {
        assert!(
            !n.receipt_tokens().contains(&token),
            "{} holds another device's receipts",
            n.device.name
        );
    }

    // The edge box dies. The shape is the directory's, not who is up: the other relays carry on.
    drop(everyone);
    edge.kill();
    let booked = nodes[3].post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 3, "booking_id": "after-the-edge" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    let paid = nodes[2].post("/v1/payments", payment("pos-3-0001", 1200));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let start = Instant::now();
    for n in &nodes {
        n.wait_for("the booking after the edge box", SYNC, |n| sold(n) == 5);
    }
    for r in nodes.iter().filter(|n| relays.contains(&n.device.name)) {
        r.wait_for("the payment on a relay left", SYNC, |n| {
            n.receipt_tokens().contains(&token)
        });
    }
    eprintln!(
        "without the edge box the booking reached all {} others and the payment both relays in {:?}",
        nodes.len(),
        start.elapsed()
    );

    // Every relay dies. The members' ring still carries a booking to every one of them.
    let mut nodes = nodes;
    for n in nodes.iter_mut().filter(|n| relays.contains(&n.device.name)) {
        n.kill();
    }
    let members: Vec<&Node> = nodes
        .iter()
        .filter(|n| !relays.contains(&n.device.name))
        .collect();
    let booked = members[0].post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 1, "booking_id": "no-relay-left" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    let start = Instant::now();
    for n in &members {
        n.wait_for("the booking over the ring alone", SYNC, |n| sold(n) == 6);
    }
    eprintln!(
        "with every relay gone the booking went round the ring to all {} members in {:?}",
        members.len(),
        start.elapsed()
    );
}
