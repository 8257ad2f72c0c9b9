//! The show report: what happened at a show, computed from the merged documents alone.
//!
//! The origin (or any device, over what it holds) gathers a [`ShowData`] and [`build`] turns it into a
//! [`ShowReport`]: bookings and sales over time, per device, conversion velocity (an attendee's check-in to their
//! first purchase), retention lift (attendees returning from an earlier show convert how much better than new
//! ones), an engagement score from aggregate counters, and the MTTR of the site's outages. Attendees appear only
//! as the pseudonymous ids the documents carry, and the report itself holds only counts, sums and times: no id
//! of any attendee is in it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::access::AccessRecord;
use crate::escrow::SlotRecord;
use crate::telemetry::{Incident, SamplingPolicy, TelemetryRecord};

/// A verified receipt, as the report needs it.
#[derive(Debug, Clone)]
pub struct ReportReceipt {
    pub device: String,
    pub amount_minor: u64,
    pub currency: String,
    pub issued_at: u64,
    pub reconciled: bool,
    pub attendee: Option<String>,
}

/// Everything the report is computed from.
#[derive(Debug, Clone, Default)]
pub struct ShowData {
    pub show: String,
    pub now: u64,
    /// Device hex -> (name, role).
    pub devices: BTreeMap<String, (String, String)>,
    pub slots: Vec<SlotRecord>,
    /// Receipts that verified against the directory.
    pub receipts: Vec<ReportReceipt>,
    /// Receipts that did not verify (forged, or from a revoked device).
    pub rejected: usize,
    /// This show's access document.
    pub access: Option<AccessRecord>,
    /// Other shows' access documents at this site (for retention).
    pub other_access: Vec<AccessRecord>,
    /// Every device's telemetry document.
    pub telemetry: Vec<TelemetryRecord>,
    /// Which counters are conversion signals (left out of engagement, which measures the rest).
    pub conversion: Option<SamplingPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShowReport {
    pub show: String,
    pub generated_at: u64,
    pub totals: Totals,
    /// Width of each timeline bucket, chosen so the show fits in at most 60.
    pub bucket_ms: u64,
    pub timeline: Vec<Bucket>,
    pub devices: Vec<DeviceLine>,
    pub conversion: Conversion,
    pub retention: Retention,
    pub engagement: Engagement,
    pub operations: Operations,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub capacity: u64,
    pub bookings: u64,
    pub seats: u64,
    pub payments: u64,
    /// Currency -> minor units taken.
    pub amounts: BTreeMap<String, u64>,
    pub reconciled: BTreeMap<String, u64>,
    pub unreconciled: BTreeMap<String, u64>,
    pub rejected_receipts: usize,
    pub attendee_checkins: u64,
    pub staff_checkins: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    pub start: u64,
    pub bookings: u64,
    pub seats: u64,
    pub payments: u64,
    pub amounts: BTreeMap<String, u64>,
    pub checkins: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceLine {
    pub device: String,
    pub name: String,
    pub role: String,
    pub bookings: u64,
    pub seats: u64,
    pub payments: u64,
    pub amounts: BTreeMap<String, u64>,
    pub checkins: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Conversion {
    /// Attendees checked in.
    pub checked_in: u64,
    /// Of those, attendees who bought (a booking or a payment naming them) after their check-in.
    pub converted: u64,
    pub rate: f64,
    pub median_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    /// Check-in to first purchase: (label, attendees).
    pub histogram: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Retention {
    /// Attendees checked in here who had checked in at another show of this site before.
    pub returning: u64,
    pub new: u64,
    pub returning_conversion: f64,
    pub new_conversion: f64,
    /// Returning conversion over new conversion; none while either group is empty or new attendees never bought.
    pub lift: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Engagement {
    /// Interactions counted site-wide (every counter but conversion signals and popmesh's own).
    pub interactions: i64,
    pub per_attendee: f64,
    /// 0 to 100: `100 * (1 - e^(-per_attendee / 10))`; ten interactions per attendee score 63.
    pub score: u32,
    /// Counter -> site-wide total (aggregates only).
    pub counters: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Operations {
    /// Incidents recorded by devices (each device records what it lost).
    pub incidents: usize,
    /// Site outages: periods when at least one device could not reach a peer it had reached.
    pub outages: Vec<Outage>,
    /// Mean time to restore, over outages that ended.
    pub mttr_ms: Option<u64>,
    /// Outages of the link to the origin, and their MTTR.
    pub uplink_outages: Vec<Outage>,
    pub uplink_mttr_ms: Option<u64>,
    /// Outages still open when the report was made.
    pub open: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outage {
    pub start: u64,
    pub end: Option<u64>,
    /// Devices out of someone's reach during it.
    pub devices: usize,
}

/// Bucket widths the timeline chooses from.
const BUCKETS_MS: [u64; 10] = [
    1_000,
    5_000,
    15_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
    21_600_000,
    86_400_000,
    604_800_000,
];
const TIMELINE_BUCKETS_MAX: u64 = 60;

/// Builds the report.
pub fn build(data: &ShowData) -> ShowReport {
    let mut totals = Totals {
        rejected_receipts: data.rejected,
        ..Totals::default()
    };
    let mut devices: BTreeMap<String, DeviceLine> = BTreeMap::new();
    // Events on the timeline: (time, kind).
    enum Ev<'a> {
        Sale(u64),
        Pay(&'a str, u64),
        CheckIn,
    }
    let mut events: Vec<(u64, Ev<'_>)> = Vec::new();
    // Attendee -> first purchase time (any purchase; filtered against check-in below).
    let mut purchases: BTreeMap<&str, Vec<u64>> = BTreeMap::new();

    for slot in data.slots.iter().filter(|s| s.show == data.show) {
        totals.capacity = totals.capacity.saturating_add(slot.capacity);
        for (device, escrow) in &slot.devices {
            for sale in escrow.sales.values() {
                totals.bookings += 1;
                totals.seats = totals.seats.saturating_add(sale.seats);
                let l = device_line(&mut devices, data, device);
                l.bookings += 1;
                l.seats = l.seats.saturating_add(sale.seats);
                events.push((sale.at, Ev::Sale(sale.seats)));
                if let Some(a) = &sale.attendee {
                    purchases.entry(a.as_str()).or_default().push(sale.at);
                }
            }
        }
    }
    for r in &data.receipts {
        totals.payments += 1;
        {
            let slot = totals.amounts.entry(r.currency.clone()).or_default();
            *slot = slot.saturating_add(r.amount_minor);
        }
        let side = if r.reconciled {
            &mut totals.reconciled
        } else {
            &mut totals.unreconciled
        };
        {
            let slot = side.entry(r.currency.clone()).or_default();
            *slot = slot.saturating_add(r.amount_minor);
        }
        let l = device_line(&mut devices, data, &r.device);
        l.payments += 1;
        {
            let slot = l.amounts.entry(r.currency.clone()).or_default();
            *slot = slot.saturating_add(r.amount_minor);
        }
        events.push((r.issued_at, Ev::Pay(&r.currency, r.amount_minor)));
        if let Some(a) = &r.attendee {
            purchases.entry(a.as_str()).or_default().push(r.issued_at);
        }
    }

    // Check-ins: this show's, first per attendee.
    let mut first_checkin: BTreeMap<&str, u64> = BTreeMap::new();
    if let Some(access) = &data.access {
        for (device, list) in &access.checkins {
            for c in list.values() {
                device_line(&mut devices, data, device).checkins += 1;
                events.push((c.at, Ev::CheckIn));
                match (&c.subject, c.kind.as_str()) {
                    (Some(subject), "attendee") => {
                        totals.attendee_checkins += 1;
                        let t = first_checkin.entry(subject.as_str()).or_insert(c.at);
                        *t = (*t).min(c.at);
                    }
                    (_, "attendee") => totals.attendee_checkins += 1,
                    _ => totals.staff_checkins += 1,
                }
            }
        }
    }

    // Timeline.
    let start = events.iter().map(|(t, _)| *t).min().unwrap_or(data.now);
    let end = events.iter().map(|(t, _)| *t).max().unwrap_or(data.now);
    let span = end.saturating_sub(start).saturating_add(1);
    let bucket_ms = BUCKETS_MS
        .into_iter()
        .find(|b| span.div_ceil(*b) <= TIMELINE_BUCKETS_MAX)
        .unwrap_or(BUCKETS_MS[BUCKETS_MS.len() - 1]);
    let first = start / bucket_ms * bucket_ms;
    let count = if events.is_empty() {
        0
    } else {
        // Bounded whatever times a peer wrote: events past the last bucket land in it.
        ((end - first) / bucket_ms + 1).min(TIMELINE_BUCKETS_MAX)
    };
    let mut timeline: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            start: first.saturating_add(i.saturating_mul(bucket_ms)),
            ..Bucket::default()
        })
        .collect();
    for (t, ev) in &events {
        let i = ((t - first) / bucket_ms).min(count.saturating_sub(1)) as usize;
        let b = &mut timeline[i];
        match ev {
            Ev::Sale(seats) => {
                b.bookings += 1;
                b.seats = b.seats.saturating_add(*seats);
            }
            Ev::Pay(currency, amount) => {
                b.payments += 1;
                {
                    let slot = b.amounts.entry((*currency).to_owned()).or_default();
                    *slot = slot.saturating_add(*amount);
                }
            }
            Ev::CheckIn => b.checkins += 1,
        }
    }

    // Conversion velocity.
    let converted_after = |who: &str, at: u64| -> Option<u64> {
        purchases
            .get(who)
            .and_then(|ts| ts.iter().filter(|t| **t >= at).min())
            .map(|t| t - at)
    };
    let mut delays: Vec<u64> = first_checkin
        .iter()
        .filter_map(|(who, at)| converted_after(who, *at))
        .collect();
    delays.sort_unstable();
    let checked_in = first_checkin.len() as u64;
    let converted = delays.len() as u64;
    let histogram_edges: [(&str, u64); 5] = [
        ("under 1 min", 60_000),
        ("1-5 min", 300_000),
        ("5-15 min", 900_000),
        ("15-60 min", 3_600_000),
        ("1 h or more", u64::MAX),
    ];
    let mut histogram: Vec<(String, u64)> = histogram_edges
        .iter()
        .map(|(l, _)| ((*l).to_owned(), 0))
        .collect();
    for d in &delays {
        let i = histogram_edges
            .iter()
            .position(|(_, edge)| d < edge)
            .unwrap_or(histogram_edges.len() - 1);
        histogram[i].1 += 1;
    }
    let conversion = Conversion {
        checked_in,
        converted,
        rate: ratio(converted, checked_in),
        median_ms: percentile(&delays, 50),
        p90_ms: percentile(&delays, 90),
        histogram,
    };

    // Retention: returning = checked in at another show before this check-in.
    let mut earlier: BTreeMap<&str, u64> = BTreeMap::new();
    for access in data.other_access.iter().filter(|a| a.show != data.show) {
        for list in access.checkins.values() {
            for c in list.values() {
                if let Some(s) = &c.subject {
                    let t = earlier.entry(s.as_str()).or_insert(c.at);
                    *t = (*t).min(c.at);
                }
            }
        }
    }
    let (mut returning, mut new, mut returning_bought, mut new_bought) = (0u64, 0u64, 0u64, 0u64);
    for (who, at) in &first_checkin {
        let bought = converted_after(who, *at).is_some();
        if earlier.get(who).is_some_and(|t| t < at) {
            returning += 1;
            returning_bought += u64::from(bought);
        } else {
            new += 1;
            new_bought += u64::from(bought);
        }
    }
    let returning_conversion = ratio(returning_bought, returning);
    let new_conversion = ratio(new_bought, new);
    let retention = Retention {
        returning,
        new,
        returning_conversion,
        new_conversion,
        lift: (returning > 0 && new_bought > 0).then(|| returning_conversion / new_conversion),
    };

    // Engagement, from aggregate counters only.
    let mut counters: BTreeMap<String, i64> = BTreeMap::new();
    for t in &data.telemetry {
        for (name, c) in &t.counters {
            let is_signal = data
                .conversion
                .as_ref()
                .is_some_and(|p| p.is_conversion(name));
            if !name.starts_with("popmesh.") && !is_signal {
                {
                    let slot = counters.entry(name.clone()).or_default();
                    *slot = slot.saturating_add(c.value());
                }
            }
        }
    }
    let interactions: i64 = counters.values().fold(0i64, |a, b| a.saturating_add(*b));
    let per_attendee = interactions.max(0) as f64 / checked_in.max(1) as f64;
    let engagement = Engagement {
        interactions,
        per_attendee,
        score: (100.0 * (1.0 - (-per_attendee / 10.0).exp())).round() as u32,
        counters,
    };

    ShowReport {
        show: data.show.clone(),
        generated_at: data.now,
        totals,
        bucket_ms,
        timeline,
        devices: devices.into_values().collect(),
        conversion,
        retention,
        engagement,
        operations: operations(&data.telemetry),
    }
}

fn device_line<'a>(
    devices: &'a mut BTreeMap<String, DeviceLine>,
    data: &ShowData,
    device: &str,
) -> &'a mut DeviceLine {
    devices.entry(device.to_owned()).or_insert_with(|| {
        let (name, role) = data
            .devices
            .get(device)
            .cloned()
            .unwrap_or_else(|| (short(device), "unknown".into()));
        DeviceLine {
            device: device.to_owned(),
            name,
            role,
            ..DeviceLine::default()
        }
    })
}

/// Every device records what *it* lost, so one kiosk going dark is seen by each of its peers, and a partitioned
/// kiosk sees everyone vanish. Counting those one by one would multiply one failure; instead the site is down
/// while *any* device misses a peer it had, and an outage is a maximal such period.
pub fn operations(telemetry: &[TelemetryRecord]) -> Operations {
    let all: Vec<&Incident> = telemetry
        .iter()
        .flat_map(|t| t.incidents.values())
        .filter(|i| i.kind != crate::telemetry::ROGUE_CHANGE)
        .collect();
    let outages = merge(all.iter().copied());
    let uplink = merge(all.iter().copied().filter(|i| i.kind == "origin_lost"));
    Operations {
        incidents: all.len(),
        mttr_ms: mean_duration(&outages),
        uplink_mttr_ms: mean_duration(&uplink),
        open: outages.iter().filter(|o| o.end.is_none()).count(),
        outages,
        uplink_outages: uplink,
    }
}

fn merge<'a>(incidents: impl Iterator<Item = &'a Incident>) -> Vec<Outage> {
    let mut spans: Vec<(u64, Option<u64>, &str)> = incidents
        .map(|i| (i.started, i.resolved, i.subject.as_str()))
        .collect();
    spans.sort_by_key(|(s, _, _)| *s);
    let mut out: Vec<(Outage, BTreeSet<&str>)> = Vec::new();
    for (start, end, subject) in spans {
        let extends = out.last().is_some_and(|(o, _)| match o.end {
            None => true,
            Some(e) => start <= e,
        });
        if extends {
            let Some((o, who)) = out.last_mut() else {
                continue;
            };
            o.end = match (o.end, end) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            who.insert(subject);
        } else {
            out.push((
                Outage {
                    start,
                    end,
                    devices: 0,
                },
                BTreeSet::from([subject]),
            ));
        }
    }
    out.into_iter()
        .map(|(mut o, who)| {
            o.devices = who.len();
            o
        })
        .collect()
}

fn mean_duration(outages: &[Outage]) -> Option<u64> {
    let ended: Vec<u64> = outages
        .iter()
        .filter_map(|o| o.end.map(|e| e.saturating_sub(o.start)))
        .collect();
    (!ended.is_empty()).then(|| {
        let sum: u128 = ended.iter().map(|d| u128::from(*d)).sum();
        u64::try_from(sum / ended.len() as u128).unwrap_or(u64::MAX)
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1) - 1;
    Some(sorted[rank.min(sorted.len() - 1)])
}

fn short(hex: &str) -> String {
    hex.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::CheckIn;
    use crate::escrow::{DeviceEscrow, Sale};

    fn checkin(at: u64, who: &str) -> CheckIn {
        CheckIn {
            at,
            kind: "attendee".into(),
            issuer: "ed".into(),
            expires_at: at + 1,
            subject: Some(who.into()),
        }
    }

    fn access(show: &str, device: &str, list: &[(u64, &str)]) -> AccessRecord {
        AccessRecord {
            show: show.into(),
            revoked: BTreeMap::new(),
            checkins: BTreeMap::from([(
                device.into(),
                list.iter()
                    .enumerate()
                    .map(|(i, (at, who))| (format!("p{i}"), checkin(*at, who)))
                    .collect(),
            )]),
            confirmed: BTreeMap::new(),
        }
    }

    fn incident(kind: &str, subject: &str, started: u64, resolved: Option<u64>) -> Incident {
        Incident {
            kind: kind.into(),
            subject: subject.into(),
            started,
            resolved,
        }
    }

    #[test]
    fn a_show_with_returning_fans_an_outage_and_sales_reads_back_as_numbers() {
        const MIN: u64 = 60_000;
        let t0 = 10_000 * MIN;
        let sale = |at: u64, who: Option<&str>| Sale {
            seats: 2,
            at,
            attendee: who.map(str::to_owned),
        };
        let slot = SlotRecord {
            show: "fri".into(),
            slot: "s1".into(),
            capacity: 20,
            grants: BTreeMap::new(),
            devices: BTreeMap::from([(
                "k1".to_owned(),
                DeviceEscrow {
                    sales: BTreeMap::from([
                        ("b1".to_owned(), sale(t0 + 2 * MIN, Some("ann"))),
                        ("b2".to_owned(), sale(t0 + 30 * MIN, Some("bo"))),
                        ("b3".to_owned(), sale(t0 + 40 * MIN, None)),
                    ]),
                    transfers: BTreeMap::new(),
                },
            )]),
        };
        let receipt = |amount, reconciled, who: Option<&str>| ReportReceipt {
            device: "p1".into(),
            amount_minor: amount,
            currency: "EUR".into(),
            issued_at: t0 + 10 * MIN,
            reconciled,
            attendee: who.map(str::to_owned),
        };
        let mut telemetry = TelemetryRecord {
            device: "k1".into(),
            counters: BTreeMap::new(),
            incidents: BTreeMap::new(),
            sees: Vec::new(),
            sees_at: 0,
            addrs: Vec::new(),
            rehearsal: None,
            rehearsal_answer: None,
            tallies: BTreeMap::new(),
        };
        telemetry
            .counters
            .insert("screen.tap".into(), autosurgeon::Counter::with_value(40));
        telemetry
            .counters
            .insert("checkin".into(), autosurgeon::Counter::with_value(4));
        // One kiosk goes dark for 10 s: the edge and the POS both see it (one outage, not two); later the
        // uplink drops for 60 s; a last outage is still open.
        for (recorder, i) in [
            ("ed", incident("peer_lost", "k2", t0, Some(t0 + 10_000))),
            (
                "p1",
                incident("peer_lost", "k2", t0 + 1_000, Some(t0 + 9_000)),
            ),
            (
                "ed",
                incident("origin_lost", "or", t0 + MIN, Some(t0 + 2 * MIN)),
            ),
            ("ed", incident("peer_lost", "k1", t0 + 5 * MIN, None)),
        ] {
            let _ = recorder;
            telemetry.incidents.insert(i.key() + recorder, i);
        }
        let data = ShowData {
            show: "fri".into(),
            now: t0 + 60 * MIN,
            devices: BTreeMap::from([("k1".into(), ("kiosk-1".into(), "kiosk".into()))]),
            slots: vec![slot],
            receipts: vec![receipt(1_000, true, Some("cy")), receipt(500, false, None)],
            rejected: 1,
            // ann and bo came to Thursday's show; cy is new; dee checks in and buys nothing.
            access: Some(access(
                "fri",
                "door",
                &[
                    (t0, "ann"),
                    (t0 + MIN, "bo"),
                    (t0 + 5 * MIN, "cy"),
                    (t0, "dee"),
                ],
            )),
            other_access: vec![access(
                "thu",
                "door",
                &[(t0 - 1_440 * MIN, "ann"), (t0 - 1_440 * MIN, "bo")],
            )],
            telemetry: vec![telemetry],
            conversion: Some(SamplingPolicy {
                events_per_sec_max: 1,
                sample_one_in: 1,
                conversion: vec!["checkin".into()],
            }),
        };
        let r = build(&data);
        assert_eq!(
            (r.totals.bookings, r.totals.seats, r.totals.capacity),
            (3, 6, 20)
        );
        assert_eq!(r.totals.amounts["EUR"], 1_500);
        assert_eq!(r.totals.reconciled["EUR"], 1_000);
        assert_eq!(r.totals.unreconciled["EUR"], 500);
        assert_eq!(r.totals.rejected_receipts, 1);
        assert_eq!(r.totals.attendee_checkins, 4);
        assert_eq!(
            r.bucket_ms, 60_000,
            "40 minutes fit in 60 one-minute buckets"
        );
        assert_eq!(r.timeline.iter().map(|b| b.seats).sum::<u64>(), 6);
        assert_eq!(r.timeline.iter().map(|b| b.checkins).sum::<u64>(), 4);
        // ann: 2 min, cy: 5 min, bo: 29 min; dee never bought.
        assert_eq!((r.conversion.checked_in, r.conversion.converted), (4, 3));
        assert_eq!(r.conversion.median_ms, Some(5 * MIN));
        assert_eq!(r.conversion.histogram[1], ("1-5 min".into(), 1));
        assert_eq!(r.conversion.histogram[2], ("5-15 min".into(), 1));
        assert_eq!(r.retention.returning, 2);
        assert_eq!(r.retention.new, 2);
        assert_eq!(
            r.retention.lift,
            Some(2.0),
            "both returning fans bought, half the new ones did"
        );
        assert_eq!(
            r.engagement.interactions, 40,
            "conversion signals are not engagement"
        );
        assert_eq!(r.engagement.per_attendee, 10.0);
        assert_eq!(r.engagement.score, 63);
        assert_eq!(r.operations.incidents, 4);
        assert_eq!(r.operations.outages.len(), 3);
        assert_eq!(
            r.operations.outages[0].devices, 1,
            "the dark kiosk, seen twice"
        );
        assert_eq!(r.operations.mttr_ms, Some((10_000 + MIN) / 2));
        assert_eq!(r.operations.uplink_mttr_ms, Some(MIN));
        assert_eq!(r.operations.open, 1);
        let json = serde_json::to_string(&r).expect("json");
        for who in ["ann", "bo", "cy", "dee"] {
            assert!(
                !json.contains(&format!("\"{who}\"")),
                "no attendee id in the report"
            );
        }
    }
}
