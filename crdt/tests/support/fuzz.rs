//! The harness every decoder story shares (`crdt`, `transport` and `node` include this one file).
//!
//! [`fuzz`] runs a property the way CI does: a fixed number of cases from a seed derived from the decoder's name,
//! so a failure in CI fails the same way on every machine. With `POPMESH_FUZZ_SECS=N` it runs the same property
//! for N seconds instead, round after round, each round with the next seed (`POPMESH_FUZZ_SEED=K` starts at K),
//! and prints `fuzz <decoder>: <cases> cases in <secs> s, 0 failures` for BENCHMARKS.md. `bench/fuzz-long.sh`
//! runs every story that way.
//!
//! Allocations are counted per thread while a decoder runs ([`bounded`]), so a story can say "a declared length
//! of 4 GiB allocates nothing near 4 GiB" instead of trusting the OS to overcommit.
//! The input strategies ([`hostile_bytes`], [`hostile_text`]) mostly start from a valid encoding and damage it,
//! so the fuzzer gets past the tag, the version and the base64 before it hits a field.

#![allow(dead_code)] // each test binary uses its own share of the harness

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestError, TestRng, TestRunner};

/// Runs `property` over `strategy`: `ci_cases` cases, or rounds of `ci_cases` for `POPMESH_FUZZ_SECS` seconds.
/// Panics with the decoder's name, the round's seed and the smallest failing input proptest found.
pub fn fuzz<S>(
    decoder: &str,
    ci_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let budget = std::env::var("POPMESH_FUZZ_SECS")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .expect("POPMESH_FUZZ_SECS is a whole number of seconds")
        })
        .map(Duration::from_secs);
    let shift = std::env::var("POPMESH_FUZZ_SEED").ok().map_or(0, |s| {
        s.trim()
            .parse::<u64>()
            .expect("POPMESH_FUZZ_SEED is a number")
    });
    let started = Instant::now();
    let mut cases = 0u64;
    for round in 0u64.. {
        let seed = seed_for(decoder, shift.wrapping_add(round));
        let config = Config {
            cases: ci_cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        match runner.run(&strategy, &property) {
            Ok(()) => cases += u64::from(ci_cases),
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz {decoder}: failed after {cases} cases (round {round}; POPMESH_FUZZ_SEED={} \
                 replays it): {why}\nsmallest failing input: {input:#?}",
                shift.wrapping_add(round)
            ),
            Err(TestError::Abort(why)) => panic!("fuzz {decoder}: aborted in round {round}: {why}"),
        }
        match budget {
            Some(budget) if started.elapsed() < budget => {}
            _ => break,
        }
    }
    if budget.is_some() {
        // On a line of its own: the test harness has already printed the test's name without a newline.
        println!(
            "\nfuzz {decoder}: {cases} cases in {:.0} s, 0 failures",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A 32-byte seed from the decoder's name and the round (FNV-1a, spread by splitmix64).
fn seed_for(decoder: &str, round: u64) -> [u8; 32] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in decoder.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = h ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    seed
}

// ---------------------------------------------------------------------------------------------------------------
// Allocations

/// Runs `f`, returning its result and the most bytes it held at once on this thread (allocation-counter replaces
/// the test binary's global allocator with one that counts per thread).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    (out.expect("the closure ran"), info.bytes_max)
}

/// What a decoder may hold for an input of `input_len` bytes: some fixed room, then in proportion to the input,
/// never in proportion to a length the input declares.
pub fn alloc_bound(input_len: usize, per_byte: usize) -> u64 {
    (64 * 1024 + per_byte * input_len) as u64
}

/// Runs the decoder `f` on an input of `input_len` bytes and fails the case if it held more than
/// [`alloc_bound`] at once.
pub fn bounded<T>(
    input_len: usize,
    per_byte: usize,
    f: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    let (out, peak) = measure(f);
    let bound = alloc_bound(input_len, per_byte);
    prop_assert!(
        peak <= bound,
        "an input of {input_len} bytes made the decoder hold {peak} bytes at once, more than {bound}"
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Mutations

/// Length values a hostile peer declares: the largest there are, and just past each of popmesh's bounds.
pub fn huge_length() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX - 3),
        Just(0x8000_0000),
        Just(0x0100_0000),
        Just(4097),                 // codec::FIELD_BYTES_MAX + 1
        Just(16 * 1024 + 1),        // a hello frame or a fragment, + 1
        Just(32 * 1024 * 1024 + 1), // a reassembled message, + 1
        any::<u32>(),
    ]
}

/// One way to damage an encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: Index,
        bit: u8,
    },
    Set {
        at: Index,
        byte: u8,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
    /// Copies a run of bytes right after itself: a field said twice.
    Duplicate {
        at: Index,
        len: usize,
    },
    /// Overwrites what looks like a length prefix (a big-endian `u32` that fits in what follows) with `len`.
    HugeLength {
        at: Index,
        len: u32,
    },
    /// Overwrites four bytes anywhere with `len`.
    HugeLengthAnywhere {
        at: Index,
        len: u32,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1..40usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        2 => (any::<Index>(), 1..80usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        3 => (any::<Index>(), huge_length()).prop_map(|(at, len)| Mutation::HugeLength { at, len }),
        1 => (any::<Index>(), huge_length()).prop_map(|(at, len)| Mutation::HugeLengthAnywhere { at, len }),
    ]
}

/// Applies `mutation` to `bytes` in place.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Truncate { at } => bytes.truncate(at.index(len + 1)),
        Mutation::Insert { at, bytes: extra } => {
            let i = at.index(len + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        _ if len == 0 => {}
        Mutation::Flip { at, bit } => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Set { at, byte } => bytes[at.index(len)] = *byte,
        Mutation::Delete { at, len: n } => {
            let i = at.index(len);
            bytes.drain(i..(i + n).min(len));
        }
        Mutation::Duplicate { at, len: n } => {
            let i = at.index(len);
            let run = bytes[i..(i + n).min(len)].to_vec();
            let end = i + run.len();
            bytes.splice(end..end, run);
        }
        Mutation::HugeLength { at, len: value } => {
            let candidates: Vec<usize> = (0..len.saturating_sub(3))
                .filter(|&i| {
                    let n = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
                        as usize;
                    n > 0 && i + 4 + n <= len
                })
                .collect();
            if !candidates.is_empty() {
                let i = candidates[at.index(candidates.len())];
                bytes[i..i + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::HugeLengthAnywhere { at, len: value } => {
            let i = at.index(len);
            let be = value.to_be_bytes();
            let n = (len - i).min(4);
            bytes[i..i + n].copy_from_slice(&be[..n]);
        }
    }
}

/// One way to damage a text: the same, on characters and lines, with insertions drawn from `dictionary`.
#[derive(Debug, Clone)]
pub enum TextMutation {
    Insert { at: Index, text: String },
    Replace { at: Index, len: usize, text: String },
    Delete { at: Index, len: usize },
    Duplicate { at: Index, len: usize },
    Truncate { at: Index },
    DuplicateLine { at: Index },
    DeleteLine { at: Index },
}

/// Text to insert: a word of the format from `dictionary`, or anything at all.
pub fn insertion(dictionary: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(dictionary).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[\\x00-\\x1f\\x7f\"'\\\\,=\\[\\]{}#\\r\\n\\t ]{1,4}",
    ]
}

pub fn text_mutation(dictionary: &'static [&'static str]) -> impl Strategy<Value = TextMutation> {
    prop_oneof![
        3 => (any::<Index>(), insertion(dictionary)).prop_map(|(at, text)| TextMutation::Insert { at, text }),
        3 => (any::<Index>(), 1..12usize, insertion(dictionary))
            .prop_map(|(at, len, text)| TextMutation::Replace { at, len, text }),
        1 => (any::<Index>(), 1..30usize).prop_map(|(at, len)| TextMutation::Delete { at, len }),
        1 => (any::<Index>(), 1..60usize).prop_map(|(at, len)| TextMutation::Duplicate { at, len }),
        1 => any::<Index>().prop_map(|at| TextMutation::Truncate { at }),
        1 => any::<Index>().prop_map(|at| TextMutation::DuplicateLine { at }),
        1 => any::<Index>().prop_map(|at| TextMutation::DeleteLine { at }),
    ]
}

/// Applies `mutation` to `text` in place, on character boundaries.
pub fn apply_text(text: &mut String, mutation: &TextMutation) {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    let span = |at: &Index, len: usize| {
        let start = at.index(chars + 1);
        (bounds[start], bounds[(start + len).min(chars)])
    };
    let lines: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c == '\n' {
                out.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < text.len() {
            out.push((start, text.len()));
        }
        out
    };
    match mutation {
        TextMutation::Insert { at, text: extra } => {
            let (i, _) = span(at, 0);
            text.insert_str(i, extra);
        }
        TextMutation::Replace {
            at,
            len,
            text: extra,
        } => {
            let (i, j) = span(at, *len);
            text.replace_range(i..j, extra);
        }
        TextMutation::Delete { at, len } => {
            let (i, j) = span(at, *len);
            text.replace_range(i..j, "");
        }
        TextMutation::Duplicate { at, len } => {
            let (i, j) = span(at, *len);
            let run = text[i..j].to_owned();
            text.insert_str(j, &run);
        }
        TextMutation::Truncate { at } => {
            let (i, _) = span(at, 0);
            text.truncate(i);
        }
        TextMutation::DuplicateLine { at } if !lines.is_empty() => {
            let (i, j) = lines[at.index(lines.len())];
            let mut line = text[i..j].to_owned();
            if !line.ends_with('\n') {
                line.insert(0, '\n');
            }
            text.insert_str(j, &line);
        }
        TextMutation::DeleteLine { at } if !lines.is_empty() => {
            let (i, j) = lines[at.index(lines.len())];
            text.replace_range(i..j, "");
        }
        TextMutation::DuplicateLine { .. } | TextMutation::DeleteLine { .. } => {}
    }
}

/// What a hostile peer sends in place of a valid encoding `original` (with its context `C`): a damaged copy
/// mostly, sometimes bytes from nowhere (with or without the original's tag and version in front), sometimes the
/// original itself (so every story also checks that the valid encoding is accepted). `(context, original, input)`.
pub fn hostile_bytes<C: Clone + Debug>(
    valid: impl Strategy<Value = (C, Vec<u8>)>,
) -> impl Strategy<Value = (C, Vec<u8>, Vec<u8>)> {
    let junk = || prop::collection::vec(any::<u8>(), 0..600);
    (
        valid,
        prop_oneof![
            6 => prop::collection::vec(mutation(), 1..=4).prop_map(Hostile::Damaged),
            1 => junk().prop_map(Hostile::Junk),
            2 => junk().prop_map(Hostile::Headed),
            1 => Just(Hostile::Original),
        ],
    )
        .prop_map(|((context, original), how)| {
            let input = match how {
                Hostile::Damaged(mutations) => {
                    let mut input = original.clone();
                    for m in &mutations {
                        apply(&mut input, m);
                    }
                    input
                }
                Hostile::Junk(junk) => junk,
                Hostile::Headed(junk) => original.iter().take(2).copied().chain(junk).collect(),
                Hostile::Original => original.clone(),
            };
            (context, original, input)
        })
}

#[derive(Debug, Clone)]
enum Hostile {
    Damaged(Vec<Mutation>),
    Junk(Vec<u8>),
    Headed(Vec<u8>),
    Original,
}

/// The same for a text format: damaged text, any string at all, or the original. `(context, original, input)`.
pub fn hostile_text<C: Clone + Debug>(
    valid: impl Strategy<Value = (C, String)>,
    dictionary: &'static [&'static str],
) -> impl Strategy<Value = (C, String, String)> {
    (
        valid,
        prop_oneof![
            6 => prop::collection::vec(text_mutation(dictionary), 1..=4).prop_map(Some),
            1 => Just(None),
        ],
        prop_oneof![
            8 => Just(None),
            1 => any::<String>().prop_map(Some),
            1 => prop::collection::vec(insertion(dictionary), 0..40).prop_map(|words| Some(words.concat())),
        ],
    )
        .prop_map(|((context, original), mutations, junk)| {
            let input = match (junk, mutations) {
                (Some(junk), _) => junk,
                (None, Some(mutations)) => {
                    let mut input = original.clone();
                    for m in &mutations {
                        apply_text(&mut input, m);
                    }
                    input
                }
                (None, None) => original.clone(),
            };
            (context, original, input)
        })
}
