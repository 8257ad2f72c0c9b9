//! A field kit from nothing: `deploy/provision.sh` installs popmesh on an edge box (a new site) and on a kiosk
//! (a join token), starts both, and returns only once the kiosk is enrolled, synced and holds the media the edge
//! box published. Staged under PROVISION_ROOT with `--no-systemd`, so it touches nothing outside a scratch
//! directory; the systemd unit itself is checked with `systemd-analyze verify` where systemd is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::site::{Scratch, binary, free_port, popmesh};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs provision.sh staged under `root`.
fn provision(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("bash")
        .arg(deploy_dir().join("provision.sh"))
        .args(args)
        .args([
            "--binary",
            binary().to_str().expect("utf-8"),
            "--no-systemd",
            "--no-mdns",
            "--media-port",
            "0",
            "--wait",
            "90",
        ])
        .env("PROVISION_ROOT", root)
        .output()
        .expect("bash runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops a node provision.sh started in the background.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("var/lib/popmesh/popmesh.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn an_edge_box_and_a_kiosk_are_provisioned_from_nothing_and_the_kiosk_preseeds_the_show() {
    let scratch = Scratch::new("deploy");
    let (edge_root, kiosk_root) = (scratch.0.join("edge-kit"), scratch.0.join("kiosk-kit"));
    let edge_api = format!("127.0.0.1:{}", free_port());
    let edge_mesh = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let edge_tls = format!("127.0.0.1:{}", free_port());
    let (ok, out, err) = provision(
        &edge_root,
        &[
            "--role",
            "edge",
            "--site",
            "Harbour Pop-up",
            "--name",
            "edge-1",
            "--api",
            &edge_api,
            "--listen",
            &edge_mesh,
            "--tls-listen",
            &edge_tls,
        ],
    );
    let _edge = Running(edge_root.clone());
    assert!(ok, "edge provisioning failed:\n{out}\n{err}");
    assert!(out.contains("ready: edge-1 (edge)"), "{out}");
    assert!(
        out.contains(&format!("console:  http://{edge_api}/console")),
        "{out}"
    );
    // With a TLS listener, provisioning ends with the pairing code tablets scan: the TLS address and the
    // certificate's fingerprint.
    let code = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("pairing:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no pairing code printed:\n{out}"));
    let json = code.strip_prefix("popmesh-pair1.").expect("a pairing code");
    let json = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, json)
        .expect("base64");
    let pairing: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(pairing["api"], format!("https://{edge_tls}"), "{pairing}");
    assert_eq!(
        pairing["sha256"].as_str().map(str::len),
        Some(64),
        "{pairing}"
    );
    let edge_data = edge_root.join("var/lib/popmesh");
    let edge_data = edge_data.to_str().expect("utf-8");
    let config =
        std::fs::read_to_string(edge_root.join("var/lib/popmesh/popmesh.toml")).expect("config");
    assert!(
        config.contains("upload_limit_mib_s = 40"),
        "the edge role's settings:\n{config}"
    );

    // The edge box publishes the show's media, then invites a kiosk.
    let poster = scratch.0.join("poster.jpg");
    std::fs::write(&poster, vec![7u8; 300_000]).expect("poster");
    let (ok, _, err) = popmesh(&[
        "manifest",
        "publish",
        "--data",
        edge_data,
        "--name",
        "fri",
        poster.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    let (ok, token, err) = popmesh(&[
        "site",
        "invite",
        "--data",
        edge_data,
        "--role",
        "kiosk",
        "--bootstrap",
        &edge_mesh,
    ]);
    assert!(ok, "{err}");

    // The kiosk kit: one command with the token; it returns once the kiosk holds the poster.
    let kiosk_api = format!("127.0.0.1:{}", free_port());
    let kiosk_mesh = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let (ok, out, err) = provision(
        &kiosk_root,
        &[
            "--role",
            "kiosk",
            "--token",
            token.trim(),
            "--name",
            "kiosk-2",
            "--api",
            &kiosk_api,
            "--listen",
            &kiosk_mesh,
        ],
    );
    let _kiosk = Running(kiosk_root.clone());
    assert!(ok, "kiosk provisioning failed:\n{out}\n{err}");
    assert!(out.contains("ready: kiosk-2 (kiosk)"), "{out}");
    let kiosk_data = kiosk_root.join("var/lib/popmesh");
    let (ok, status, err) = popmesh(&[
        "status",
        "--data",
        kiosk_data.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["media"]["complete"], 1, "{status}");
    assert!(
        std::fs::read_to_string(kiosk_root.join("var/lib/popmesh/popmesh.toml"))
            .expect("config")
            .contains(&format!("bootstrap = [\"{edge_mesh}\"]")),
        "the token's bootstrap address is kept"
    );
    assert!(kiosk_root.join("usr/local/bin/popmesh").exists());

    // Provisioning twice refuses instead of overwriting a device.
    let (ok, _, err) = provision(
        &kiosk_root,
        &[
            "--role",
            "kiosk",
            "--token",
            token.trim(),
            "--name",
            "kiosk-2",
        ],
    );
    assert!(!ok && err.contains("already holds a device"), "{err}");
    let (ok, _, err) = provision(&scratch.0.join("x"), &["--role", "till", "--name", "x"]);
    assert!(!ok && err.contains("--role till"), "{err}");
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/popmesh.service")).expect("unit");
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "PrivateDevices=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(hardening), "{hardening} missing");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        common::site::skipped("the systemd-analyze part: no systemd-analyze here");
        return;
    }
    let scratch = Scratch::new("unit");
    let staged = scratch.0.join("popmesh.service");
    std::fs::write(
        &staged,
        unit.replace("/usr/local/bin/popmesh", binary().to_str().expect("utf-8")),
    )
    .expect("unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&staged)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains("Unknown"),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn every_metric_the_grafana_dashboard_charts_is_one_a_node_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/popmesh-site.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let site = common::site::Site::create("grafana");
    let edge = common::site::Node::start(&site.edge, &[]);
    let exported: std::collections::BTreeSet<String> = edge
        .client()
        .get("/metrics")
        .expect("metrics")
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard worth opening");
    let mut charted = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("popmesh_") {
                    charted += 1;
                    assert!(
                        exported.contains(word),
                        "panel {:?} charts {word}, which the node does not export",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(charted >= 15, "{charted} series charted");
}
