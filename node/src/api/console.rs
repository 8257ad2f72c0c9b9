//! The operator console: `GET /console` is one web page (no build step; plain HTML, CSS and a little JavaScript
//! embedded in the binary) that polls `GET /v1/console` every second and shows the site at a glance: peers and
//! their roles, who sees whom, sync lag per document, preseed completeness, unreconciled payments, alerts when a
//! threshold of `[alerts]` is crossed, and the MTTR of recent outages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiError;
use crate::config::Alerts;
use crate::node::Node;

const PAGE: &str = include_str!("console.html");

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/v1/console",
    tag = "site",
    operation_id = "console",
    summary = "What the operator console shows",
    responses((status = 200, description = "The console's data", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn state(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    Ok(Json(snapshot(&node).await).into_response())
}

/// One alert on the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `warning` or `critical`.
    pub level: &'static str,
    pub message: String,
}

/// What the alerts are computed from.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Currency -> unreconciled minor units.
    pub unreconciled: BTreeMap<String, u64>,
    /// 0 to 1.
    pub preseed: f64,
    pub admitted_peers: u64,
    /// Connected peers (name) and how long since they were heard from, in ms.
    pub silent: Vec<(String, u64)>,
    /// Peers out of reach (name) and for how long, in ms.
    pub out_of_reach: Vec<(String, u64)>,
    /// Why this device's data file refuses writes, if it does (a full disk, a failing disk).
    pub store_fault: Option<String>,
    /// Whether free space is below the reserve kept for money (media and uploads have stopped).
    pub below_reserve: bool,
    /// At an origin with a warehouse: what it owes and why it cannot write.
    pub warehouse: Option<crate::node::warehouse::SinkStatus>,
    /// Devices whose changes this device refused (name, what they tried), one entry per device.
    pub rogues: Vec<(String, String)>,
}

/// The alerts `facts` raise under `limits` (a limit of 0 is off).
pub fn alerts(limits: &Alerts, facts: &Facts) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some(fault) = &facts.store_fault {
        out.push(Alert {
            level: "critical",
            message: format!(
                "this device refuses payments and bookings: its data file refuses writes ({fault}); free space and it resumes by itself"
            ),
        });
    } else if facts.below_reserve {
        out.push(Alert {
            level: "warning",
            message: "free disk space is below the reserve kept for money: media preseed and uploads have stopped"
                .into(),
        });
    }
    for (name, what) in &facts.rogues {
        out.push(Alert {
            level: "critical",
            message: format!(
                "{name} sent changes it may not make ({what}); they were refused and its link closed. If it is not \
                 yours any more, revoke it (popmesh site revoke)"
            ),
        });
    }
    if let Some(w) = facts.warehouse.as_ref().filter(|w| !w.connected) {
        out.push(Alert {
            level: "warning",
            message: format!(
                "the warehouse is not written ({}): {} document(s) owed{}; the site keeps selling and the origin catches up when it is back",
                w.error.as_deref().unwrap_or("not reached yet"),
                w.owed_documents,
                if w.overflow { " or more" } else { "" }
            ),
        });
    }
    if limits.unreconciled_max_minor > 0 {
        for (currency, minor) in &facts.unreconciled {
            if *minor > limits.unreconciled_max_minor {
                out.push(Alert {
                    level: "critical",
                    message: format!(
                        "{} {currency} taken offline and not reconciled, over the limit of {} {currency}",
                        major(*minor),
                        major(limits.unreconciled_max_minor)
                    ),
                });
            }
        }
    }
    let preseed = (facts.preseed * 100.0).floor() as u64;
    if limits.preseed_min_percent > 0 && preseed < limits.preseed_min_percent {
        out.push(Alert {
            level: "warning",
            message: format!(
                "media preseeded {preseed}%, below {}%",
                limits.preseed_min_percent
            ),
        });
    }
    if limits.peers_min > 0 && facts.admitted_peers < limits.peers_min {
        out.push(Alert {
            level: "critical",
            message: format!(
                "{} peer(s) in reach, fewer than {}",
                facts.admitted_peers, limits.peers_min
            ),
        });
    }
    if limits.peer_silent_max_secs > 0 {
        for (name, ms) in &facts.silent {
            if *ms > limits.peer_silent_max_secs * 1000 {
                out.push(Alert {
                    level: "warning",
                    message: format!("{name} connected but silent for {} s", ms / 1000),
                });
            }
        }
    }
    if limits.outage_max_secs > 0 {
        for (name, ms) in &facts.out_of_reach {
            if *ms > limits.outage_max_secs * 1000 {
                out.push(Alert {
                    level: "critical",
                    message: format!("{name} out of reach for {} s", ms / 1000),
                });
            }
        }
    }
    out
}

fn major(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// The console's view of the site from this device.
pub async fn snapshot(node: &Node) -> serde_json::Value {
    let lag = node.sync_lag().await;
    let status = node.status_with(&lag).await;
    let now = crate::clock::now().0;
    let view = node.view().ok();
    let names: BTreeMap<String, (String, String)> = view
        .as_ref()
        .map(|v| {
            v.certificates()
                .map(|c| (c.device.to_hex(), (c.name.clone(), c.role.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let name_of = |hex: &str| -> String {
        names
            .get(hex)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| hex.chars().take(8).collect())
    };

    // Who sees whom: every device's own list, as last synced here.
    let records = node.telemetry_records().await;
    let mut devices: Vec<serde_json::Value> = names
        .iter()
        .map(|(hex, (name, role))| {
            let record = records.iter().find(|r| &r.device == hex);
            serde_json::json!({
                "device": hex,
                "name": name,
                "role": role,
                "sees": record.map(|r| r.sees.iter().map(|d| name_of(d)).collect::<Vec<_>>()),
                "as_of_ms_ago": record.filter(|r| r.sees_at > 0).map(|r| now.saturating_sub(r.sees_at)),
                "me": *hex == status.device,
            })
        })
        .collect();
    devices.sort_by_key(|d| d["name"].as_str().unwrap_or_default().to_owned());

    // Sync lag per document: which connected peers have not acknowledged its latest heads.
    let mut documents: Vec<serde_json::Value> = node
        .open_documents()
        .into_iter()
        .map(|(id, name)| {
            let behind: Vec<String> = lag
                .iter()
                .filter(|(peer, (docs, _))| crate::node::is_device_peer(peer) && docs.contains(&id))
                .map(|(peer, _)| name_of(peer))
                .collect();
            // Device ids in names read as device names (`show/fri/ledger/pos-1`).
            let label = name
                .to_string()
                .split('/')
                .map(|part| {
                    if crate::node::is_device_peer(part) {
                        name_of(part)
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            serde_json::json!({ "name": label, "id": id.to_string(), "behind": behind })
        })
        .collect();
    documents.sort_by_key(|d| d["name"].as_str().unwrap_or_default().to_owned());

    let mut unreconciled: BTreeMap<String, u64> = BTreeMap::new();
    let mut receipts = 0usize;
    if let Ok(list) = node.receipts().await {
        for r in list.iter().filter(|r| r.verified.is_ok()) {
            receipts += 1;
            if !r.reconciled {
                {
                    let slot = unreconciled.entry(r.receipt.currency.clone()).or_default();
                    *slot = slot.saturating_add(r.receipt.amount_minor);
                }
            }
        }
    }
    let operations = popmesh_crdt::report::operations(&records);
    let recent: Vec<_> = operations.outages.iter().rev().take(8).collect();

    let open = node.open_incident_list();
    let facts = Facts {
        unreconciled: unreconciled.clone(),
        preseed: status.media.completeness,
        admitted_peers: status.peers.iter().filter(|p| p.admitted).count() as u64,
        silent: status
            .peers
            .iter()
            .filter(|p| p.admitted)
            .filter_map(|p| Some((name_of(&p.device), p.last_heard_ms_ago?)))
            .collect(),
        store_fault: status.store.fault.as_ref().map(|f| f.reason.clone()),
        below_reserve: status.store.below_reserve,
        warehouse: crate::node::warehouse::status_of(node),
        out_of_reach: open
            .iter()
            .map(|i| (name_of(&i.subject), now.saturating_sub(i.started)))
            .collect(),
        rogues: {
            let mut seen = BTreeSet::new();
            let mut rogues = Vec::new();
            for r in status.refused_changes.iter().rev() {
                let who = r.author.clone().unwrap_or_else(|| r.peer.clone());
                if seen.insert(who.clone()) {
                    rogues.push((name_of(&who), format!("{}: {}", r.document, r.reason)));
                }
            }
            rogues
        },
    };
    let alerts = alerts(&node.alerts, &facts);
    let facts_warehouse = facts.warehouse.clone();
    let peers: Vec<serde_json::Value> = status
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "device": p.device,
                "name": p.name.clone().unwrap_or_else(|| name_of(&p.device)),
                "role": p.role.map(|r| r.to_string()),
                "admitted": p.admitted,
                "connected_for_ms": p.connected_for_ms,
                "documents_behind": p.documents_behind,
                "last_heard_ms_ago": p.last_heard_ms_ago,
            })
        })
        .collect();
    serde_json::json!({
        "site": status.site_name,
        "device": { "name": status.name, "role": status.role.to_string(), "id": status.device },
        "now": now,
        "uptime_ms": status.uptime_ms,
        "peers": peers,
        "devices": devices,
        "documents": documents,
        "media": status.media,
        "payments": { "receipts": receipts, "unreconciled_minor": unreconciled },
        "operations": {
            "mttr_ms": operations.mttr_ms,
            "uplink_mttr_ms": operations.uplink_mttr_ms,
            "open": operations.open,
            "incidents": operations.incidents,
            "recent": recent,
        },
        "alerts": alerts,
        "warehouse": facts_warehouse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_raises_its_alert_and_zero_turns_it_off() {
        let facts = Facts {
            unreconciled: BTreeMap::from([("EUR".into(), 150_000), ("GBP".into(), 10)]),
            preseed: 0.5,
            admitted_peers: 1,
            silent: vec![("pos-1".into(), 45_000), ("kiosk-1".into(), 100)],
            out_of_reach: vec![("origin".into(), 90_000)],
            store_fault: None,
            below_reserve: false,
            warehouse: Some(crate::node::warehouse::SinkStatus {
                connected: false,
                error: Some("connection refused".into()),
                owed_documents: 3,
                queued_documents: 3,
                overflow: false,
                pending_reconciliation_rows: 0,
                oldest_owed_ms_ago: Some(4_000),
                last_commit_ms_ago: None,
            }),
            rogues: vec![(
                "kiosk-9".into(),
                "show/fri/ledger/ab: it writes into the ledger of ab".into(),
            )],
        };
        let limits = Alerts {
            peers_min: 2,
            ..Alerts::default()
        };
        let got: Vec<String> = alerts(&limits, &facts)
            .into_iter()
            .map(|a| a.message)
            .collect();
        assert_eq!(
            got,
            vec![
                "kiosk-9 sent changes it may not make (show/fri/ledger/ab: it writes into the ledger of ab); they were refused and its link closed. If it is not yours any more, revoke it (popmesh site revoke)",
                "the warehouse is not written (connection refused): 3 document(s) owed; the site keeps selling and the origin catches up when it is back",
                "1500.00 EUR taken offline and not reconciled, over the limit of 1000.00 EUR",
                "media preseeded 50%, below 100%",
                "1 peer(s) in reach, fewer than 2",
                "pos-1 connected but silent for 45 s",
                "origin out of reach for 90 s",
            ]
        );
        let off = all_off();
        let mut quiet = facts.clone();
        quiet.rogues.clear();
        if let Some(w) = quiet.warehouse.as_mut() {
            w.connected = true;
        }
        assert!(alerts(&off, &quiet).is_empty());
    }

    /// Every threshold turned off.
    fn all_off() -> Alerts {
        Alerts {
            unreconciled_max_minor: 0,
            preseed_min_percent: 0,
            peers_min: 0,
            peer_silent_max_secs: 0,
            outage_max_secs: 0,
        }
    }

    #[test]
    fn a_full_disk_is_a_critical_alert_whatever_the_thresholds() {
        let full = Facts {
            store_fault: Some("I/O error: No space left on device (os error 28)".into()),
            below_reserve: true,
            ..Facts::default()
        };
        let off = all_off();
        let got = alerts(&off, &full);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].level, "critical");
        assert!(
            got[0].message.contains("refuses payments and bookings"),
            "{got:?}"
        );
        let low = Facts {
            below_reserve: true,
            ..Facts::default()
        };
        assert!(alerts(&off, &low)[0].message.contains("below the reserve"));
    }
}
