//! The attendees, arriving at the doors: passes, check-ins, taps at the kiosks, bookings and payments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use popmesh_crdt::access::PassKind;
use popmesh_crdt::privacy::{AttendeeProfile, Consent};
use popmesh_crdt::receipt::PaymentRequest;

use super::{RETURNING, SHOW, SLOT};
use popmesh_node::node::Node;

/// The attendees, arriving: each is issued a pass at the edge box, checked in at a kiosk door, taps around the
/// kiosk, and some (returning fans more often) book seats and buy merchandise a moment later.
pub(super) struct Crowd {
    pub(super) edge: Arc<Node>,
    pub(super) doors: [Arc<Node>; 2],
    pub(super) tills: [Arc<Node>; 2],
}

#[derive(Debug, Default)]
pub(super) struct Sales {
    pub(super) seats: u64,
    pub(super) paid: u64,
    pub(super) payments: usize,
}

impl Crowd {
    pub(super) async fn arrive(
        &self,
        attendees: &[String],
        range: std::ops::Range<usize>,
    ) -> Result<Sales> {
        let visits = range.map(|i| self.visit(i, attendees[i].clone()));
        let mut sales = Sales::default();
        for visit in futures::future::join_all(visits).await {
            let (seats, paid) = visit?;
            sales.seats += seats;
            if paid > 0 {
                sales.paid += paid;
                sales.payments += 1;
            }
        }
        Ok(sales)
    }

    /// One attendee's visit; returns the seats they booked and what they paid.
    async fn visit(&self, i: usize, who: String) -> Result<(u64, u64)> {
        let err = |what: &str, e: &dyn std::fmt::Display| anyhow::anyhow!("{what} for {who}: {e}");
        // Arrivals 150 ms apart; buyers decide 0.3 to 2.3 s after check-in.
        tokio::time::sleep(Duration::from_millis(150 * (i as u64 % 16))).await;
        let pass = self
            .edge
            .issue_pass(Some(SHOW.into()), PassKind::Attendee, &who, 4 * 3600)
            .await
            .map_err(|e| err("pass", &e))?;
        let door = &self.doors[i % 2];
        door.check_in(&pass.to_text(), Some(SHOW.into()))
            .await
            .map_err(|e| err("check-in", &e))?;
        // Half the attendees say yes to analytics at the kiosk; the profile stays on that kiosk.
        door.update_profile(
            &who,
            &AttendeeProfile {
                consent: Consent {
                    analytics: Some(i.is_multiple_of(2)),
                    marketing: Some(i.is_multiple_of(3)),
                },
                fields: BTreeMap::from([("favourite_stage".into(), "harbour".into())]),
                visits: vec![],
            },
        )
        .map_err(|e| err("profile", &e))?;
        for _ in 0..(4 + i % 7) {
            door.count("screen.tap", 1, Some(&who))
                .map_err(|e| err("telemetry", &e))?;
        }
        door.count("ar.session", 1, Some(&who))
            .map_err(|e| err("telemetry", &e))?;
        let buys = if i < RETURNING {
            i % 4 != 3
        } else {
            i.is_multiple_of(3)
        };
        if !buys {
            return Ok((0, 0));
        }
        tokio::time::sleep(Duration::from_millis(300 + 250 * (i as u64 % 9))).await;
        let seats = 1 + (i as u64 % 3);
        door.book(SHOW, SLOT, &format!("bk-{who}"), seats, Some(who.clone()))
            .await
            .map_err(|e| err("booking", &e))?;
        let amount = 1_250 + 350 * (i as u64 % 4);
        self.tills[i % 2]
            .pay(
                PaymentRequest {
                    idempotency_key: format!("merch-{who}"),
                    amount_minor: amount,
                    currency: "EUR".into(),
                    attendee: Some(who.clone()),
                },
                Some(SHOW.into()),
            )
            .await
            .map_err(|e| err("payment", &e))?;
        Ok((seats, amount))
    }
}
