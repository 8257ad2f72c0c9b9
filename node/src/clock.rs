//! The node's one reading of the wall clock, handed to the sans-IO core as `UnixMillis`.
//!
//! `POPMESH_CLOCK_SKEW_MS` (signed milliseconds, read once) shifts this device's clock, to drill what the site
//! does with a device whose clock is wrong (`popmesh rehearse` must flag it). It is meant for drills and tests,
//! never for a device at a show.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use popmesh_crdt::UnixMillis;

fn skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("POPMESH_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Milliseconds since the Unix epoch; a clock set before 1970 reads as zero.
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMillis(ms.saturating_add(skew_ms()).max(0) as u64)
}
