//! Byte ranges and chunk ranges: how a blob is measured, widened to whole chunk groups, and cut into parts.

use std::ops::Range;

use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt as _};

/// A blob is cut into parts only when each part is at least this large.
const PART_BYTES_MIN: u64 = 4 << 20;

/// A blob is cut into at most this many parts (for devices to serve each other).
pub(super) const PARTS_MAX: usize = 16;

/// Bytes of `ranges` (chunk ranges) inside a blob of `size` bytes.
pub(super) fn chunk_bytes(ranges: &ChunkRanges, size: u64) -> u64 {
    use bao_tree::ChunkNum;
    let mut total = 0;
    for r in ranges.iter() {
        let (start, end) = match r {
            range_collections::range_set::RangeSetRange::Range(r) => (*r.start, *r.end),
            range_collections::range_set::RangeSetRange::RangeFrom(r) => {
                (*r.start, ChunkNum::chunks(size))
            }
        };
        let (a, b) = (start.to_bytes().min(size), end.to_bytes().min(size));
        total += b.saturating_sub(a);
    }
    total
}

/// Blobs are verified in chunk groups of 16 KiB: a range is stored, fetched and checked in whole groups.
const GROUP_BYTES: u64 = 16 * 1024;

/// The chunk ranges covering byte range `r`, widened to whole chunk groups.
pub(super) fn group_chunks(r: &Range<u64>) -> ChunkRanges {
    let start = r.start / GROUP_BYTES * GROUP_BYTES;
    let end = r.end.div_ceil(GROUP_BYTES).saturating_mul(GROUP_BYTES);
    ChunkRanges::bytes(start..end)
}

/// The chunk ranges covering byte ranges `wanted`, in whole chunk groups.
pub(super) fn to_chunks(wanted: &[Range<u64>]) -> ChunkRanges {
    let mut out = ChunkRanges::empty();
    for r in wanted {
        out |= group_chunks(r);
    }
    out
}

/// Splits byte ranges into at most `parts` pieces of about equal size, on 16 KiB boundaries (bao chunk groups).
pub(super) fn split(wanted: &[Range<u64>], parts: usize) -> Vec<Vec<Range<u64>>> {
    const ALIGN: u64 = GROUP_BYTES;
    let total: u64 = wanted.iter().fold(0u64, |sum, r| {
        sum.saturating_add(r.end.saturating_sub(r.start))
    });
    let parts = parts
        .clamp(1, PARTS_MAX)
        .min((total / PART_BYTES_MIN).max(1) as usize);
    if parts == 1 {
        return vec![wanted.to_vec()];
    }
    let share = (total / parts as u64).div_ceil(ALIGN) * ALIGN;
    let mut out: Vec<Vec<Range<u64>>> = vec![Vec::new()];
    let mut room = share;
    for r in wanted {
        let mut start = r.start;
        while start < r.end {
            if room == 0 && out.len() < parts {
                out.push(Vec::new());
                room = share;
            }
            let take = if out.len() == parts {
                r.end - start
            } else {
                (r.end - start).min(room)
            };
            if let Some(last) = out.last_mut() {
                last.push(start..start + take);
            }
            start += take;
            room = room.saturating_sub(take);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_blob_is_split_on_chunk_group_boundaries_and_covers_every_byte() {
        let size = 100 << 20;
        let parts = split(&[0..size], 3);
        assert_eq!(parts.len(), 3);
        let mut at = 0;
        for part in &parts {
            for r in part {
                assert_eq!(r.start, at, "parts are contiguous");
                assert_eq!(r.start % (16 * 1024), 0, "parts start on a chunk group");
                at = r.end;
            }
        }
        assert_eq!(at, size);
        assert_eq!(
            split(&[0..1000], 4),
            vec![vec![0..1000]],
            "small blobs stay whole"
        );
        let slices = split(&[0..(20 << 20), (50 << 20)..(70 << 20)], 4);
        let total: u64 = slices.iter().flatten().map(|r| r.end - r.start).sum();
        assert_eq!(total, 40 << 20);
    }

    #[test]
    fn bytes_of_chunk_ranges_are_clamped_to_the_blob() {
        assert_eq!(chunk_bytes(&ChunkRanges::all(), 5000), 5000);
        assert_eq!(chunk_bytes(&ChunkRanges::bytes(0..2048), 5000), 2048);
        assert_eq!(chunk_bytes(&ChunkRanges::bytes(4096..9000), 5000), 904);
    }
}
