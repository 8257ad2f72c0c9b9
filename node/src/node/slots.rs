//! Seats: booking, transfers, the rebalancer's transfers (planned by the device core) and availability.

use super::*;

/// A slot a request names that the site does not have.
#[derive(Debug, thiserror::Error)]
#[error("show {} has no slot {}", popmesh_crdt::naming::shown(.show), popmesh_crdt::naming::shown(.slot))]
pub struct UnknownSlot {
    pub show: String,
    pub slot: String,
}

/// Why a slot's availability could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AvailabilityError {
    #[error(transparent)]
    UnknownSlot(#[from] UnknownSlot),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a booking was not made. Nothing was written for it.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The request is malformed (seats out of range, a bad booking id or attendee).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    UnknownSlot(#[from] UnknownSlot),
    /// This device's quota in the slot does not hold that many seats (other devices may hold more).
    #[error("{0}")]
    QuotaSpent(String),
    /// The booking id was used for another booking.
    #[error("{0}")]
    IdReused(String),
    /// The slot's document holds as many sales of this device as one may.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why quota was not given to another device. Nothing was written for it.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The request is malformed (no seats, a bad transfer id, to this device itself).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    UnknownSlot(#[from] UnknownSlot),
    #[error(transparent)]
    UnknownDevice(#[from] UnknownDevice),
    /// This device's quota in the slot does not hold that many seats.
    #[error("{0}")]
    QuotaSpent(String),
    /// The transfer id was used for another transfer.
    #[error("{0}")]
    IdReused(String),
    /// The slot's document holds as many entries of this device as one may.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl From<AvailabilityError> for BookError {
    fn from(e: AvailabilityError) -> Self {
        match e {
            AvailabilityError::UnknownSlot(e) => Self::UnknownSlot(e),
            AvailabilityError::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

impl From<AvailabilityError> for TransferError {
    fn from(e: AvailabilityError) -> Self {
        match e {
            AvailabilityError::UnknownSlot(e) => Self::UnknownSlot(e),
            AvailabilityError::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

/// What an escrow refusal means to the client.
enum Refusal {
    Invalid(String),
    QuotaSpent(String),
    IdReused(String),
    Full(String),
    Unavailable(Unavailable),
}

fn refusal(e: EscrowError) -> Refusal {
    match e {
        e @ EscrowError::QuotaSpent { .. } => Refusal::QuotaSpent(e.to_string()),
        e @ (EscrowError::BookingConflict { .. } | EscrowError::TransferConflict { .. }) => {
            Refusal::IdReused(e.to_string())
        }
        e @ (EscrowError::BadSeatCount(_)
        | EscrowError::BadId(_)
        | EscrowError::SelfTransfer
        | EscrowError::BadTransferSeats
        | EscrowError::OverGranted { .. }
        | EscrowError::BadAttendee(_)) => Refusal::Invalid(e.to_string()),
        e @ EscrowError::Full => Refusal::Full(e.to_string()),
        e => Refusal::Unavailable(internal(e)),
    }
}

impl From<EscrowError> for BookError {
    fn from(e: EscrowError) -> Self {
        match refusal(e) {
            Refusal::Invalid(m) => Self::Invalid(m),
            Refusal::QuotaSpent(m) => Self::QuotaSpent(m),
            Refusal::IdReused(m) => Self::IdReused(m),
            Refusal::Full(m) => Self::Full(m),
            Refusal::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

impl From<EscrowError> for TransferError {
    fn from(e: EscrowError) -> Self {
        match refusal(e) {
            Refusal::Invalid(m) => Self::Invalid(m),
            Refusal::QuotaSpent(m) => Self::QuotaSpent(m),
            Refusal::IdReused(m) => Self::IdReused(m),
            Refusal::Full(m) => Self::Full(m),
            Refusal::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

impl Node {
    pub(crate) fn slot_handle(
        &self,
        view: &DirectoryView,
        show: &str,
        slot: &str,
    ) -> Result<DocHandle, AvailabilityError> {
        let known = view
            .shows
            .get(show)
            .is_some_and(|s| s.slots.contains_key(slot));
        if !known {
            return Err(UnknownSlot {
                show: show.into(),
                slot: slot.into(),
            }
            .into());
        }
        self.handle_by_name(&DocName::Slot {
            show: show.into(),
            slot: slot.into(),
        })
        .ok_or_else(|| Unavailable::loading(format!("slot {show}/{slot}")).into())
    }

    /// A slot document's view (quotas, sales, transfers), as this replica holds it.
    pub(crate) async fn slot_view(
        &self,
        handle: &DocHandle,
    ) -> Result<popmesh_crdt::escrow::SlotView, Unavailable> {
        handle
            .with_document_async(|am| {
                Doc::<Slot, &mut Automerge>::attach(am)
                    .map_err(EscrowError::Doc)
                    .and_then(|d| d.view())
            })
            .await
            .map_err(stopped)?
            .map_err(internal)
    }

    /// Books `seats` in a slot against this device's escrow quota. Returns whether the booking is new.
    pub async fn book(
        &self,
        show: &str,
        slot: &str,
        booking: &str,
        seats: u64,
        attendee: Option<String>,
    ) -> Result<bool, BookError> {
        self.writable()?;
        let view = self.view()?;
        let handle = self.slot_handle(&view, show, slot)?;
        let (me, actor, at, booking) = (self.me(), self.actor(), clock::now(), booking.to_owned());
        let outcome = self
            .change(&handle, move |am| {
                Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                    .map_err(EscrowError::Doc)
                    .and_then(|mut d| d.sell_to(me, &booking, seats, at, attendee.as_deref()))
            })
            .await?;
        Ok(outcome? == SaleOutcome::Recorded)
    }

    /// Gives `seats` of this device's quota in a slot to another device.
    pub async fn transfer(
        &self,
        show: &str,
        slot: &str,
        to: DeviceId,
        transfer: &str,
        seats: u64,
    ) -> Result<(), TransferError> {
        self.writable()?;
        let view = self.view()?;
        self.check_trusted(&view, to, "to")?;
        let handle = self.slot_handle(&view, show, slot)?;
        let (me, actor, at, transfer) =
            (self.me(), self.actor(), clock::now(), transfer.to_owned());
        let outcome = self
            .change(&handle, move |am| {
                Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                    .map_err(EscrowError::Doc)
                    .and_then(|mut d| d.transfer(me, to, &transfer, seats, at))
            })
            .await?;
        Ok(outcome?)
    }

    /// Gives seats from this device's quota in each slot to a connected device running low, by the policy in
    /// `popmesh_crdt::escrow::plan_rebalance` (only the giver writes a transfer). Returns the transfers made.
    pub async fn rebalance(&self) -> Result<usize, Unavailable> {
        let connected = self.admitted_devices();
        if connected.is_empty() {
            return Ok(0);
        }
        let slots: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Slot { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut made = 0;
        for handle in slots {
            let n = self.transfers.fetch_add(1, Ordering::Relaxed);
            let id = format!("rb-{}-{n}", self.epoch);
            let (me, actor, at, low) =
                (self.me(), self.actor(), clock::now(), self.escrow.low_water);
            let connected = connected.clone();
            let moved = self
                .change(&handle, move |am| {
                    let mut doc = Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                        .map_err(EscrowError::Doc)?;
                    let view = doc.view()?;
                    let plan = popmesh_device::rebalancer::plan(
                        &view,
                        &me,
                        &connected,
                        low,
                        popmesh_device::Mutations::none(),
                    );
                    match plan {
                        Some(t) => doc
                            .transfer(me, t.to, &id, t.seats, at)
                            .map(|()| Some((t.to, t.seats))),
                        None => Ok(None),
                    }
                })
                .await?;
            match moved {
                Ok(Some((to, seats))) => {
                    tracing::info!(to = %to.short(), seats, "gave quota to a device running low");
                    made += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("rebalancing a slot failed: {e}"),
            }
        }
        Ok(made)
    }

    /// A slot's availability as this device sees it.
    pub async fn availability(
        &self,
        show: &str,
        slot: &str,
    ) -> Result<Availability, AvailabilityError> {
        let view = self.view()?;
        let handle = self.slot_handle(&view, show, slot)?;
        let record = view.shows[show].slots[slot].clone();
        let slot_view = self.slot_view(&handle).await?;
        let me = self.me().to_hex();
        let devices = slot_view
            .devices()
            .into_iter()
            .map(|d| {
                let entry = DeviceSeats {
                    grant: slot_view.grant(&d),
                    sold: slot_view.sold(&d),
                    available: slot_view.available(&d),
                };
                (d, entry)
            })
            .collect();
        Ok(Availability {
            show: show.into(),
            slot: slot.into(),
            label: record.label,
            starts_at: record.starts_at,
            capacity: record.capacity,
            sold: slot_view.total_sold(),
            remaining: slot_view.remaining(),
            available_here: slot_view.available(&me),
            devices,
        })
    }
}
