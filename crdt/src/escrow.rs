//! Capacity escrow: bookings for one show slot, sold offline by many devices without ever overselling.
//!
//! A slot has a `capacity`, split at creation into per-device `grants` whose sum is at most the capacity. A device
//! may sell only from its own quota:
//!
//! ```text
//! quota(d) = grant(d) + seats transferred to d - seats transferred out of d
//! ```
//!
//! Quota moves between devices only through a transfer, which the *giving* device writes. Each device is the only
//! writer of its own sales and outgoing transfers (they live under `devices/<its id>`), so a device always sees all of
//! its own debits, and sees at most all of its credits. Before writing it checks
//! `sold(d) + out(d) + seats <= grant(d) + in_seen(d)`.
//!
//! **Invariant (no oversell):** at every replica, for every device `d`, `sold(d) <= quota(d)`; summing over devices,
//! the seats sold never exceed the capacity. It holds whatever the partitions and merge order because Automerge
//! applies changes causally: a replica that holds a device's sale also holds every transfer that device had seen
//! when it sold. [`SlotView::check_invariant`] states it; `tests/escrow_props.rs` drives random partition and merge
//! histories through real Automerge replicas and checks it after every step.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, ReadDoc as _};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::doc::{Doc, DocError, Schema, object_at};
use crate::identity::{DeviceId, UnixMillis};

/// A bookings document for one show slot.
#[derive(Debug)]
pub struct Slot;

impl Schema for Slot {
    const KIND: &'static str = "popmesh.slot";
    const VERSION: u64 = 1;
}

/// Sales one device may record in one slot; a slot's bookings document stays small.
pub const SALES_PER_DEVICE_MAX: usize = 10_000;
/// Seats in one booking.
pub const SEATS_PER_BOOKING_MAX: u64 = 100;
/// Identifier length for bookings and transfers, in bytes.
pub const ID_BYTES_MAX: usize = crate::naming::NAME_BYTES_MAX;

/// The slot document as stored.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct SlotRecord {
    pub show: String,
    pub slot: String,
    pub capacity: u64,
    /// Device hex id -> seats granted at creation. Written once, by the creator.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub grants: BTreeMap<String, u64>,
    /// Device hex id -> what that device (and only it) wrote.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub devices: BTreeMap<String, DeviceEscrow>,
}

/// One device's sales and outgoing transfers in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Reconcile, Hydrate)]
pub struct DeviceEscrow {
    /// Booking id -> sale.
    pub sales: BTreeMap<String, Sale>,
    /// Transfer id -> transfer out of this device.
    pub transfers: BTreeMap<String, Transfer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct Sale {
    pub seats: u64,
    pub at: u64,
    /// The buyer's pseudonymous attendee id, when the counter knew it (from their pass); never a name.
    #[autosurgeon(missing = "Option::default")]
    pub attendee: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct Transfer {
    pub to: String,
    pub seats: u64,
    pub at: u64,
}

/// Why a booking or transfer was refused.
#[derive(Debug, Error)]
pub enum EscrowError {
    #[error("this device's quota is spent: {available} seats left, {requested} requested")]
    QuotaSpent { available: u64, requested: u64 },
    #[error("booking '{id}' already exists with {existing} seats, not {requested}")]
    BookingConflict {
        id: String,
        existing: u64,
        requested: u64,
    },
    #[error("grants total {granted} seats, more than the capacity of {capacity}")]
    OverGranted { granted: u128, capacity: u64 },
    #[error("a booking must be for 1 to {SEATS_PER_BOOKING_MAX} seats, not {0}")]
    BadSeatCount(u64),
    #[error(
        "identifier {0} must be 1 to {ID_BYTES_MAX} bytes of letters, digits, '-', '_', '.' or ':', not starting with '.' and without '..'"
    )]
    BadId(String),
    #[error(
        "this device has recorded {SALES_PER_DEVICE_MAX} sales in this slot, the most a slot document holds"
    )]
    Full,
    #[error(
        "transfer '{id}' already exists for another device or seat count; use a new transfer id"
    )]
    TransferConflict { id: String },
    #[error("a transfer must move at least one seat")]
    BadTransferSeats,
    #[error("a device cannot transfer quota to itself")]
    SelfTransfer,
    #[error("attendee: {0}")]
    BadAttendee(crate::privacy::PrivacyError),
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// What a sale did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleOutcome {
    Recorded,
    /// The same booking id with the same seats was already recorded: a retried request.
    AlreadyRecorded,
}

/// A break of the no-oversell invariant, as found by [`SlotView::check_invariant`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EscrowViolation {
    #[error("device {device} sold {sold} seats against a quota of {quota}")]
    DeviceOversold {
        device: String,
        sold: i128,
        quota: i128,
    },
    #[error("{sold} seats sold against a capacity of {capacity}")]
    SlotOversold { sold: u128, capacity: u64 },
    #[error("grants total {granted} seats, more than the capacity of {capacity}")]
    OverGranted { granted: u128, capacity: u64 },
    #[error("the escrow entries of device {0} cannot be read")]
    Unreadable(String),
}

pub(crate) fn check_id(id: &str) -> Result<(), EscrowError> {
    if crate::naming::is_valid_name(id) {
        Ok(())
    } else {
        Err(EscrowError::BadId(crate::naming::shown(id)))
    }
}

/// Sums seat counts without overflow: whatever a document holds (a hostile peer may write `u64::MAX` twice), the
/// sum of fewer than 2^64 of them fits in a `u128`.
fn seats<I: IntoIterator<Item = u64>>(values: I) -> u128 {
    values.into_iter().map(u128::from).sum()
}

/// A `u128` seat sum as `u64`, saturating: availability never reads more than `u64::MAX`.
fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The grants of a slot, checked against its capacity: the rule a slot must keep before anyone sells from it.
pub fn check_grants<'a>(
    grants: impl IntoIterator<Item = &'a u64>,
    capacity: u64,
) -> Result<(), EscrowError> {
    let granted = seats(grants.into_iter().copied());
    if granted > u128::from(capacity) {
        return Err(EscrowError::OverGranted { granted, capacity });
    }
    Ok(())
}

/// One device's side of a slot; see [`Doc::totals_for`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTotals {
    pub grant: u64,
    pub transferred_in: u128,
    pub sales: BTreeMap<String, Sale>,
    pub transfers_out: BTreeMap<String, Transfer>,
}

impl DeviceTotals {
    pub fn balance(&self) -> Balance {
        Balance {
            grant: u128::from(self.grant),
            transferred_in: self.transferred_in,
            transferred_out: seats(self.transfers_out.values().map(|t| t.seats)),
            sold: seats(self.sales.values().map(|s| s.seats)),
        }
    }

    /// Seats the device may still sell or give away, as far as this replica knows.
    pub fn available(&self) -> u64 {
        self.balance().available()
    }
}

/// A device's seat account in one slot: the numbers the escrow rule is stated over. Sums are `u128`, so no
/// document content can make them wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub grant: u128,
    pub transferred_in: u128,
    pub transferred_out: u128,
    pub sold: u128,
}

impl Balance {
    /// `grant + in - out`, which may be negative on a replica that holds a broken device's writes.
    pub fn quota(&self) -> i128 {
        // Each term is below 2^64 * 2^64 = 2^128 only in theory; in any real document below 2^100, so the i128
        // difference cannot wrap. Saturate anyway: this runs on whatever a peer wrote.
        let plus = self.grant.saturating_add(self.transferred_in);
        let plus = i128::try_from(plus).unwrap_or(i128::MAX);
        let minus = i128::try_from(self.transferred_out).unwrap_or(i128::MAX);
        plus.saturating_sub(minus)
    }

    /// Seats the device may still sell or give away.
    pub fn available(&self) -> u64 {
        clamp(
            self.grant
                .saturating_add(self.transferred_in)
                .saturating_sub(self.sold.saturating_add(self.transferred_out)),
        )
    }

    /// The no-oversell invariant for one device: `sold <= quota`.
    pub fn check(&self, device: &str) -> Result<(), EscrowViolation> {
        let sold = i128::try_from(self.sold).unwrap_or(i128::MAX);
        if sold > self.quota() {
            return Err(EscrowViolation::DeviceOversold {
                device: device.to_owned(),
                sold,
                quota: self.quota(),
            });
        }
        Ok(())
    }
}

/// Pure arithmetic over a slot record: quotas, availability, and the invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub record: SlotRecord,
}

impl SlotView {
    pub fn grant(&self, device: &str) -> u64 {
        self.record.grants.get(device).copied().unwrap_or(0)
    }

    pub fn sold(&self, device: &str) -> u64 {
        clamp(self.sold_exact(device))
    }

    fn sold_exact(&self, device: &str) -> u128 {
        self.record
            .devices
            .get(device)
            .map_or(0, |d| seats(d.sales.values().map(|s| s.seats)))
    }

    fn transferred_out(&self, device: &str) -> u128 {
        self.record
            .devices
            .get(device)
            .map_or(0, |d| seats(d.transfers.values().map(|t| t.seats)))
    }

    fn transferred_in(&self, device: &str) -> u128 {
        seats(
            self.record
                .devices
                .values()
                .flat_map(|d| d.transfers.values())
                .filter(|t| t.to == device)
                .map(|t| t.seats),
        )
    }

    /// One device's seat account, as far as this replica knows.
    pub fn balance(&self, device: &str) -> Balance {
        Balance {
            grant: u128::from(self.grant(device)),
            transferred_in: self.transferred_in(device),
            transferred_out: self.transferred_out(device),
            sold: self.sold_exact(device),
        }
    }

    /// Seats this device may still sell or give away, as far as this replica knows; none when the slot's grants
    /// exceed its capacity (a slot no honest creator writes).
    pub fn available(&self, device: &str) -> u64 {
        if check_grants(self.record.grants.values(), self.record.capacity).is_err() {
            return 0;
        }
        self.balance(device).available()
    }

    fn total_sold_exact(&self) -> u128 {
        seats(
            self.record
                .devices
                .values()
                .flat_map(|d| d.sales.values())
                .map(|s| s.seats),
        )
    }

    pub fn total_sold(&self) -> u64 {
        clamp(self.total_sold_exact())
    }

    /// Seats not yet sold anywhere this replica knows of.
    pub fn remaining(&self) -> u64 {
        clamp(u128::from(self.record.capacity).saturating_sub(self.total_sold_exact()))
    }

    /// Every device that holds or held quota here.
    pub fn devices(&self) -> Vec<String> {
        let mut all: Vec<String> = self.record.grants.keys().cloned().collect();
        all.extend(self.record.devices.keys().cloned());
        for d in self.record.devices.values() {
            all.extend(d.transfers.values().map(|t| t.to.clone()));
        }
        all.sort();
        all.dedup();
        all
    }

    /// The no-oversell invariant (see the module docs).
    pub fn check_invariant(&self) -> Result<(), EscrowViolation> {
        let granted = seats(self.record.grants.values().copied());
        if granted > u128::from(self.record.capacity) {
            return Err(EscrowViolation::OverGranted {
                granted,
                capacity: self.record.capacity,
            });
        }
        for device in self.devices() {
            self.balance(&device).check(&device)?;
        }
        if self.total_sold_exact() > u128::from(self.record.capacity) {
            return Err(EscrowViolation::SlotOversold {
                sold: self.total_sold_exact(),
                capacity: self.record.capacity,
            });
        }
        Ok(())
    }
}

impl Doc<Slot> {
    /// Creates a slot with its capacity split into grants. Called once, by the device that opens the slot.
    pub fn create_slot(
        actor: ActorId,
        show: &str,
        slot: &str,
        capacity: u64,
        grants: &BTreeMap<DeviceId, u64>,
    ) -> Result<Self, EscrowError> {
        check_grants(grants.values(), capacity)?;
        check_id(show)?;
        check_id(slot)?;
        Ok(Doc::create(
            actor,
            &SlotRecord {
                show: show.to_owned(),
                slot: slot.to_owned(),
                capacity,
                grants: grants.iter().map(|(d, n)| (d.to_hex(), *n)).collect(),
                devices: BTreeMap::new(),
            },
        )?)
    }
}

impl<D: Borrow<Automerge>> Doc<Slot, D> {
    pub fn view(&self) -> Result<SlotView, EscrowError> {
        Ok(SlotView {
            record: self.read()?,
        })
    }
}

impl<D: Borrow<Automerge>> Doc<Slot, D> {
    /// One device's side of the slot, read without touching other devices' sales: its grant, its sales, its
    /// transfers out, and the transfers to it from everyone. What a sale or a transfer needs, in time proportional
    /// to the device's own history rather than the whole slot's.
    pub fn totals_for(&self, device: &str) -> Result<DeviceTotals, EscrowError> {
        let am = self.automerge();
        let grants: BTreeMap<String, u64> =
            crate::doc::lenient_map(am, &automerge::ROOT, "grants".into())
                .map_err(DocError::from)?;
        let capacity: u64 =
            autosurgeon::hydrate_prop(am, automerge::ROOT, "capacity").map_err(DocError::from)?;
        // A slot whose grants exceed its capacity (no honest creator writes one) sells nothing.
        check_grants(grants.values(), capacity)?;
        let devices = object_at(am, &["devices"])?;
        let mut totals = DeviceTotals {
            grant: grants.get(device).copied().unwrap_or(0),
            ..DeviceTotals::default()
        };
        for key in am.keys(&devices) {
            // Another device's section that does not read (only that device writes it) costs only its transfers.
            let read = object_at(am, &["devices", &key]).and_then(|entry| {
                let transfers: BTreeMap<String, Transfer> =
                    autosurgeon::hydrate_prop(am, &entry, "transfers").map_err(DocError::from)?;
                Ok((entry, transfers))
            });
            let (entry, transfers) = match read {
                Ok(read) => read,
                Err(_) if key != device => continue,
                Err(e) => return Err(e.into()),
            };
            totals.transferred_in = totals.transferred_in.saturating_add(seats(
                transfers
                    .values()
                    .filter(|t| t.to == device)
                    .map(|t| t.seats),
            ));
            if key == device {
                totals.sales =
                    autosurgeon::hydrate_prop(am, &entry, "sales").map_err(DocError::from)?;
                totals.transfers_out = transfers;
            }
        }
        Ok(totals)
    }

    /// The no-oversell invariant for one device (see the module docs): what the device that just wrote checks.
    pub fn check_device(&self, device: &str) -> Result<(), EscrowViolation> {
        self.totals_for(device)
            .map_err(|_| EscrowViolation::Unreadable(device.to_owned()))?
            .balance()
            .check(device)
    }
}

impl<D: BorrowMut<Automerge>> Doc<Slot, D> {
    /// Sells `seats` from `me`'s quota under `booking`. Retrying the same booking is a no-op.
    pub fn sell(
        &mut self,
        me: DeviceId,
        booking: &str,
        seats: u64,
        at: UnixMillis,
    ) -> Result<SaleOutcome, EscrowError> {
        self.sell_to(me, booking, seats, at, None)
    }

    /// [`Doc::sell`] to a known attendee (their pseudonymous id, as on their pass), so the show report can
    /// measure conversion from check-in to purchase.
    pub fn sell_to(
        &mut self,
        me: DeviceId,
        booking: &str,
        seats: u64,
        at: UnixMillis,
        attendee: Option<&str>,
    ) -> Result<SaleOutcome, EscrowError> {
        check_id(booking)?;
        if let Some(a) = attendee {
            crate::privacy::check_pseudonym(a).map_err(EscrowError::BadAttendee)?;
        }
        if seats == 0 || seats > SEATS_PER_BOOKING_MAX {
            return Err(EscrowError::BadSeatCount(seats));
        }
        let mine = me.to_hex();
        let totals = self.totals_for(&mine)?;
        if let Some(existing) = totals.sales.get(booking) {
            return if existing.seats == seats {
                Ok(SaleOutcome::AlreadyRecorded)
            } else {
                Err(EscrowError::BookingConflict {
                    id: booking.to_owned(),
                    existing: existing.seats,
                    requested: seats,
                })
            };
        }
        if totals.sales.len() >= SALES_PER_DEVICE_MAX {
            return Err(EscrowError::Full);
        }
        let available = totals.available();
        if seats > available {
            return Err(EscrowError::QuotaSpent {
                available,
                requested: seats,
            });
        }
        let sale = Sale {
            seats,
            at: at.0,
            attendee: attendee.map(str::to_owned),
        };
        self.transact(|tx| {
            let sales = own_entry(tx, &mine, "sales")?;
            autosurgeon::reconcile_prop(tx, sales, booking, &sale)?;
            Ok(())
        })?;
        Ok(SaleOutcome::Recorded)
    }

    /// Moves `seats` of `me`'s quota to `to`. Only the giving device writes a transfer.
    pub fn transfer(
        &mut self,
        me: DeviceId,
        to: DeviceId,
        transfer: &str,
        seats: u64,
        at: UnixMillis,
    ) -> Result<(), EscrowError> {
        check_id(transfer)?;
        if me == to {
            return Err(EscrowError::SelfTransfer);
        }
        let mine = me.to_hex();
        let totals = self.totals_for(&mine)?;
        if let Some(existing) = totals.transfers_out.get(transfer) {
            // A retry of the same transfer is a no-op; the same id for another one is refused.
            return if existing.to == to.to_hex() && existing.seats == seats {
                Ok(())
            } else {
                Err(EscrowError::TransferConflict {
                    id: transfer.to_owned(),
                })
            };
        }
        if seats == 0 {
            return Err(EscrowError::BadTransferSeats);
        }
        let available = totals.available();
        if seats > available {
            return Err(EscrowError::QuotaSpent {
                available,
                requested: seats,
            });
        }
        let record = Transfer {
            to: to.to_hex(),
            seats,
            at: at.0,
        };
        self.transact(|tx| {
            let transfers = own_entry(tx, &mine, "transfers")?;
            autosurgeon::reconcile_prop(tx, transfers, transfer, &record)?;
            Ok(())
        })?;
        Ok(())
    }
}

/// The map `field` (`sales` or `transfers`) under `devices/<mine>`, creating `devices/<mine>` with both maps in the
/// same change if this device has never written here. Only `mine` ever creates its own entry.
fn own_entry(
    tx: &mut Transaction<'_>,
    mine: &str,
    field: &str,
) -> Result<automerge::ObjId, DocError> {
    let devices = object_at(tx, &["devices"])?;
    if tx.get(&devices, mine)?.is_none() {
        autosurgeon::reconcile_prop(&mut *tx, devices, mine, DeviceEscrow::default())?;
    }
    object_at(tx, &["devices", mine, field])
}

/// The rebalancing policy: which quota a well-stocked device gives away, and to whom.
///
/// A device that holds more than twice `low_water` seats gives to the connected peer that is furthest below
/// `low_water`, enough to bring it up to `low_water`, never leaving itself below `low_water`. Only the giving device
/// runs this (it is the only writer of its transfers), so it needs no agreement with anyone.
pub fn plan_rebalance(
    view: &SlotView,
    me: &str,
    connected: &[String],
    low_water: u64,
) -> Option<(String, u64)> {
    let mine = view.available(me);
    if mine <= low_water.saturating_mul(2) {
        return None;
    }
    let (needy, has) = connected
        .iter()
        .filter(|peer| peer.as_str() != me)
        .map(|peer| (peer, view.available(peer)))
        .filter(|(_, has)| *has < low_water)
        .min_by_key(|(peer, has)| (*has, (*peer).clone()))?;
    let give = (low_water - has).min(mine - low_water);
    (give > 0).then(|| (needy.clone(), give))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(grants: &[(&str, u64)]) -> SlotView {
        SlotView {
            record: SlotRecord {
                show: "s".into(),
                slot: "t".into(),
                capacity: 100,
                grants: grants.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect(),
                devices: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn a_well_stocked_kiosk_tops_up_the_neediest_connected_peer() {
        let v = view(&[("a", 20), ("b", 1), ("c", 3)]);
        let peers = vec!["b".to_owned(), "c".to_owned()];
        assert_eq!(
            plan_rebalance(&v, "a", &peers, 5),
            Some(("b".to_owned(), 4))
        );
        // Nobody connected is low: nothing to do.
        assert_eq!(plan_rebalance(&v, "a", &["c".to_owned()], 3), None);
        // A device without a surplus gives nothing.
        assert_eq!(plan_rebalance(&v, "c", &peers, 5), None);
    }
}
