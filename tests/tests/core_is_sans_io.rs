//! Architecture Invariant: the domain core (`popmesh-crdt`), the device core (`popmesh-device`) and the simulator
//! (`popmesh-sim`) do no IO, so the node and the simulator run the same decisions and the simulator replays exactly.
//!
//! This test reads the resolved dependency graph (`cargo metadata`) and fails if one of them ever gains, among its
//! normal dependencies, a runtime, a network stack, a storage engine, a clock or an OS randomness crate: directly or
//! through another crate. (The simulator may use `rand` directly: it seeds every generator itself.)

use std::collections::{BTreeSet, VecDeque};
use std::process::Command;

use serde_json::Value;

/// Crates that would bring IO into the core, anywhere in its normal dependency tree.
const FORBIDDEN_ANYWHERE: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "socket2",
    "libp2p",
    "iroh",
    "iroh-blobs",
    "samod",
    "redb",
    "axum",
    "hyper",
    "reqwest",
    "rusqlite",
    "notify",
];
const FORBIDDEN_PREFIXES: &[&str] = &["libp2p-", "iroh-", "tokio-"];
/// Crates the core must not call itself (a clock or OS randomness). Automerge uses `getrandom` through `uuid` only to
/// draw a default actor id, which `Doc` always replaces before the first change; that is why these are checked
/// among direct dependencies only.
const FORBIDDEN_DIRECT: &[&str] = &[
    "getrandom",
    "rand",
    "rand_core",
    "chrono",
    "time",
    "uuid",
    "quanta",
];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn name_of(id: &str, packages: &[Value]) -> String {
    packages
        .iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["name"].as_str())
        .unwrap_or(id)
        .to_owned()
}

/// Names of the normal (not dev, not build) dependencies of a resolved node.
fn normal_deps(node: &Value) -> Vec<String> {
    node["deps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|dep| {
            dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null())
        })
        .filter_map(|dep| dep["pkg"].as_str().map(str::to_owned))
        .collect()
}

/// Fails if `krate` depends on IO crates (anywhere) or on a clock or OS randomness (directly, but for `allowed`).
fn assert_sans_io(krate: &str, allowed: &[&str]) {
    let meta = metadata();
    let packages = meta["packages"].as_array().expect("packages").clone();
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve graph")
        .clone();
    let node_of = |id: &str| nodes.iter().find(|n| n["id"] == id).cloned();
    let core = packages
        .iter()
        .find(|p| p["name"] == krate)
        .and_then(|p| p["id"].as_str())
        .expect("the crate is a workspace member")
        .to_owned();

    let direct: BTreeSet<String> = normal_deps(&node_of(&core).expect("core node"))
        .iter()
        .map(|id| name_of(id, &packages))
        .collect();
    let bad_direct: Vec<&String> = direct
        .iter()
        .filter(|n| FORBIDDEN_DIRECT.contains(&n.as_str()) && !allowed.contains(&n.as_str()))
        .collect();
    assert!(
        bad_direct.is_empty(),
        "{krate} depends directly on {bad_direct:?}: pass time and randomness in"
    );

    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([core.clone()]);
    let mut offenders = BTreeSet::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let name = name_of(&id, &packages);
        if FORBIDDEN_ANYWHERE.contains(&name.as_str())
            || FORBIDDEN_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            offenders.insert(name);
        }
        if let Some(node) = node_of(&id) {
            queue.extend(normal_deps(&node));
        }
    }
    assert!(
        seen.len() > 5,
        "the walk found the core's dependencies ({} crates)",
        seen.len()
    );
    assert!(
        offenders.is_empty(),
        "{krate} pulls in IO crates: {offenders:?}"
    );
}

#[test]
fn the_domain_core_depends_on_no_runtime_network_storage_clock_or_os_randomness() {
    assert_sans_io("popmesh-crdt", &[]);
}

#[test]
fn the_device_core_the_node_and_the_simulator_share_does_no_io_either() {
    assert_sans_io("popmesh-device", &[]);
}

#[test]
fn the_simulator_does_no_io_and_draws_randomness_only_from_its_seed() {
    assert_sans_io("popmesh-sim", &["rand"]);
}
