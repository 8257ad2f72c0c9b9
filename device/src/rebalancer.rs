//! The rebalancer: when this device gives seats of a slot to a connected device running low.
//!
//! The policy is `popmesh_crdt::escrow::plan_rebalance` (a device holding more than twice the low-water mark tops
//! up the neediest connected seller, never leaving itself below the mark). Only the giver writes, so it needs no
//! agreement. The shell applies the plan with `Doc::<Slot>::transfer`, which checks it against escrow; a plan the
//! escrow refuses is a bug of this module, and the simulator counts it as a violation.

use popmesh_crdt::DeviceId;
use popmesh_crdt::escrow::{SlotView, plan_rebalance};

use crate::mutation::{Mutation, Mutations};

/// Seats to give, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub to: DeviceId,
    pub seats: u64,
}

/// What this device (`me`) gives on a slot, given the devices it is linked to now that sell.
pub fn plan(
    view: &SlotView,
    me: &DeviceId,
    connected: &[DeviceId],
    low_water: u64,
    mutations: Mutations,
) -> Option<Transfer> {
    let peers: Vec<String> = connected.iter().map(DeviceId::to_hex).collect();
    let (to, seats) = plan_rebalance(view, &me.to_hex(), &peers, low_water)?;
    let to = DeviceId::from_hex(&to).ok()?;
    let seats = if mutations.has(Mutation::GiveUnheldQuota) {
        // Gives everything it holds and one more.
        view.available(&me.to_hex()).saturating_add(1)
    } else {
        seats
    };
    Some(Transfer { to, seats })
}
