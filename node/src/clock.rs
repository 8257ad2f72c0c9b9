//! The node's one reading of the wall clock, handed to the sans-IO core as `UnixMillis`.

use std::time::{SystemTime, UNIX_EPOCH};

use popmesh_crdt::UnixMillis;

/// Milliseconds since the Unix epoch; a clock set before 1970 reads as zero.
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixMillis(ms)
}
