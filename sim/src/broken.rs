//! Deliberately broken device behaviour, used only to prove the checkers catch what they claim to.
//!
//! The code here bypasses the domain core's checks on purpose. No production path calls it.

use automerge::{Automerge, ROOT, ReadDoc as _};
use popmesh_crdt::escrow::{DeviceEscrow, Sale};
use popmesh_crdt::{DeviceId, DocError, UnixMillis};

/// Writes a sale straight into a slot document, as a device that ignores its quota would.
pub fn write_sale_without_quota(
    am: &mut Automerge,
    me: DeviceId,
    booking: &str,
    seats: u64,
    at: UnixMillis,
) -> Result<(), DocError> {
    let mine = me.to_hex();
    let mut tx = am.transaction();
    let Some((_, devices)) = tx.get(ROOT, "devices")? else {
        return Err(DocError::Missing("devices".into()));
    };
    if tx.get(&devices, mine.as_str())?.is_none() {
        autosurgeon::reconcile_prop(&mut tx, &devices, mine.as_str(), DeviceEscrow::default())?;
    }
    let Some((_, entry)) = tx.get(&devices, mine.as_str())? else {
        return Err(DocError::Missing("devices/<me>".into()));
    };
    let Some((_, sales)) = tx.get(&entry, "sales")? else {
        return Err(DocError::Missing("sales".into()));
    };
    autosurgeon::reconcile_prop(
        &mut tx,
        &sales,
        booking,
        Sale {
            seats,
            at: at.0,
            attendee: None,
        },
    )?;
    tx.commit();
    Ok(())
}
