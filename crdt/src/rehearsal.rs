//! The dry rehearsal: is the site ready for the show?
//!
//! A device calls a rehearsal by writing a [`RehearsalCall`] into its telemetry document. Every device that syncs
//! it answers in its own telemetry document with its clock, how much media it has preseeded, and the peers it
//! reaches ([`RehearsalAnswer`]). So an answer proves the device is enrolled and reachable both ways through the
//! mesh, and its clock can be compared with the caller's the way NTP does: the answer was written at some caller
//! time between the call and the moment the caller first saw it, so the device's offset lies within half that
//! round trip of `answer.at - (call.at + first_seen) / 2`. [`evaluate`] turns the answers into what is not ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::Role;
use crate::telemetry::{RehearsalAnswer, RehearsalCall};

/// An answer and when the caller first saw it (caller's clock).
#[derive(Debug, Clone)]
pub struct Seen {
    pub answer: RehearsalAnswer,
    pub first_seen: u64,
}

/// An enrolled device, as the directory lists it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub device: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    pub device: String,
    pub name: String,
    pub role: String,
    pub answered: bool,
    /// The device's clock minus the caller's, estimated, and the bound on the estimate's error.
    pub clock_offset_ms: Option<i64>,
    pub clock_uncertainty_ms: Option<u64>,
    pub preseed_percent: Option<f64>,
    pub peers: Option<usize>,
    /// What is not ready on this device (empty: ready).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rehearsal {
    pub id: String,
    pub devices: Vec<DeviceCheck>,
    /// Whether an origin answered (the uplink works now).
    pub origin_reachable: bool,
    pub notes: Vec<String>,
    pub problems: usize,
    pub ready: bool,
}

/// What the rehearsal found. `require_origin`: an origin that does not answer is a problem, not a note (for a
/// site that must sync during the show).
pub fn evaluate(
    call: &RehearsalCall,
    enrolled: &[Enrolled],
    seen: &BTreeMap<String, Seen>,
    clock_tolerance_ms: u64,
    require_origin: bool,
) -> Rehearsal {
    let mut notes = Vec::new();
    let mut devices = Vec::new();
    let mut origin_reachable = false;
    for d in enrolled {
        let mut check = DeviceCheck {
            device: d.device.clone(),
            name: d.name.clone(),
            role: d.role.to_string(),
            answered: false,
            clock_offset_ms: None,
            clock_uncertainty_ms: None,
            preseed_percent: None,
            peers: None,
            problems: Vec::new(),
        };
        match seen.get(&d.device).filter(|s| s.answer.id == call.id) {
            None if d.role == Role::Origin && !require_origin => {
                notes.push(format!(
                    "the origin {} did not answer: the site runs offline until it returns, then it merges",
                    d.name
                ));
            }
            None => check.problems.push(
                "did not answer: not reachable through the mesh (off, out of range, or not running popmesh)"
                    .to_owned(),
            ),
            Some(s) => {
                check.answered = true;
                if d.role == Role::Origin {
                    origin_reachable = true;
                }
                let round_trip = s.first_seen.saturating_sub(call.at);
                let midpoint = call.at as i128 + i128::from(round_trip / 2);
                let offset = (s.answer.at as i128 - midpoint) as i64;
                let uncertainty = round_trip / 2;
                check.clock_offset_ms = Some(offset);
                check.clock_uncertainty_ms = Some(uncertainty);
                if offset.unsigned_abs().saturating_sub(uncertainty) > clock_tolerance_ms {
                    check.problems.push(format!(
                        "clock off by about {:.1} s (tolerance {:.1} s): receipts and passes are timed by it",
                        offset as f64 / 1000.0,
                        clock_tolerance_ms as f64 / 1000.0
                    ));
                }
                let preseed = f64::from(s.answer.preseed_permille) / 10.0;
                check.preseed_percent = Some(preseed);
                check.peers = Some(s.answer.peers.len());
                if s.answer.preseed_permille < 1000 && d.role != Role::Origin {
                    check
                        .problems
                        .push(format!("media preseeded {preseed:.1}%, not all of it"));
                }
            }
        }
        devices.push(check);
    }
    let problems = devices.iter().map(|d| d.problems.len()).sum();
    Rehearsal {
        id: call.id.clone(),
        devices,
        origin_reachable,
        notes,
        problems,
        ready: problems == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled(device: &str, role: Role) -> Enrolled {
        Enrolled {
            device: device.into(),
            name: format!("{device}-name"),
            role,
        }
    }

    fn seen(id: &str, at: u64, first_seen: u64, preseed: u32) -> Seen {
        Seen {
            answer: RehearsalAnswer {
                id: id.into(),
                at,
                preseed_permille: preseed,
                peers: vec!["x".into()],
            },
            first_seen,
        }
    }

    #[test]
    fn a_silent_kiosk_a_fast_clock_and_missing_media_are_each_named() {
        let call = RehearsalCall {
            id: "r1".into(),
            at: 10_000,
        };
        let site = [
            enrolled("edge", Role::Edge),
            enrolled("k1", Role::Kiosk),
            enrolled("k2", Role::Kiosk),
            enrolled("pos", Role::Pos),
            enrolled("origin", Role::Origin),
        ];
        let answers = BTreeMap::from([
            // The caller itself: answered at once.
            ("edge".to_owned(), seen("r1", 10_050, 10_100, 1000)),
            // A kiosk whose clock runs 5 s fast: answered 10_500 by our clock, 200 ms round trip.
            ("k1".to_owned(), seen("r1", 15_100, 10_200, 1000)),
            // A POS with half its media, and an answer to an older rehearsal from k2.
            ("pos".to_owned(), seen("r1", 10_100, 10_200, 500)),
            ("k2".to_owned(), seen("r0", 9_000, 10_200, 1000)),
        ]);
        let r = evaluate(&call, &site, &answers, 2_000, false);
        let by = |n: &str| r.devices.iter().find(|d| d.device == n).expect(n);
        assert!(by("edge").problems.is_empty());
        assert_eq!(by("k1").clock_offset_ms, Some(5_000));
        assert!(by("k1").problems[0].contains("clock off by about 5.0 s"));
        assert!(
            by("k2").problems[0].contains("did not answer"),
            "an old answer does not count"
        );
        assert!(by("pos").problems[0].contains("media preseeded 50.0%"));
        assert!(
            by("origin").problems.is_empty(),
            "an absent origin is a note"
        );
        assert!(!r.origin_reachable);
        assert_eq!(r.notes.len(), 1);
        assert_eq!((r.problems, r.ready), (3, false));
        let strict = evaluate(&call, &site, &answers, 2_000, true);
        assert_eq!(strict.problems, 4, "--require-origin makes it a problem");
    }
}
