//! After the hello, a peer's bytes reach a link as fragments: a header byte (class, "more follows") and a slice of
//! a sync message, reassembled per class; the node reads a message's document id from its CBOR to give it a
//! class; and an authenticated peer id is read back into a device id. A hostile peer's fragments, messages and
//! peer ids never panic the link, never make it hold more than one message's bound per class, and what the link
//! takes is exactly what an honest sender meant: fragments an outbox wrote reassemble into the messages it was
//! given, in order, class by class.
//!
//! `POPMESH_FUZZ_SECS=N` runs each story for N seconds instead (see `crdt/tests/support/fuzz.rs`,
//! `bench/fuzz-long.sh`).

#[path = "../../crdt/tests/support/fuzz.rs"]
mod fuzz;

use fuzz::{bounded, fuzz, hostile_bytes};
use libp2p::PeerId;
use popmesh_crdt::SecretKey;
use popmesh_transport::identity::{device_of_peer, peer_id};
use popmesh_transport::outbox::{
    CLASSES, FRAGMENT_BYTES, FrameError, Outbox, Reassembly, document_id, text_field,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per story in CI.
const CASES: u32 = 2048;

// ---------------------------------------------------------------------------------------------------------------
// Fragments

/// What [`Reassembly`] must do, said plainly: one buffer per class, a message when a fragment does not say "more",
/// and the link closed at the first empty frame, unknown class or message over `max`.
fn model(frames: &[Vec<u8>], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); CLASSES];
    let mut out = Vec::new();
    for frame in frames {
        let Some((&header, bytes)) = frame.split_first() else {
            return (out, Some(FrameError::Empty));
        };
        let class = header & 0x7f;
        let Some(part) = parts.get_mut(usize::from(class)) else {
            return (out, Some(FrameError::BadClass(class)));
        };
        if part.len() + bytes.len() > max {
            return (out, Some(FrameError::TooLarge(max)));
        }
        part.extend_from_slice(bytes);
        if header & 0x80 == 0 {
            out.push(std::mem::take(part));
        }
    }
    (out, None)
}

/// Messages an honest sender queues, each in a class.
fn messages() -> impl Strategy<Value = Messages> {
    let message = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (0..3 * FRAGMENT_BYTES + 2).prop_map(|n| (0..n).map(|i| (i % 251) as u8).collect()),
    ];
    prop::collection::vec((0..8u8, message), 0..12)
}

/// The frames an outbox writes for `messages`, interleaving pushes and sends as a link would.
fn outbox_frames(messages: &[(u8, Vec<u8>)], sends_between: &[usize]) -> Vec<Vec<u8>> {
    let mut outbox = Outbox::default();
    let mut frames = Vec::new();
    for (i, (class, m)) in messages.iter().enumerate() {
        outbox.push(*class, m.clone());
        for _ in 0..sends_between.get(i).copied().unwrap_or(0) {
            if let Some((frame, _)) = outbox.next_frame() {
                frames.push(frame);
            }
        }
    }
    while let Some((frame, _)) = outbox.next_frame() {
        frames.push(frame);
    }
    assert_eq!(outbox.queued_bytes(), 0);
    frames
}

/// Damage to a list of frames, as a hostile peer (or a broken one) sends them.
#[derive(Debug, Clone)]
enum FrameDamage {
    /// Bytes inside one frame, the header included.
    Within {
        frame: Index,
        damage: fuzz::Mutation,
    },
    Drop {
        frame: Index,
    },
    Repeat {
        frame: Index,
    },
    Swap {
        a: Index,
        b: Index,
    },
    Insert {
        at: Index,
        frame: Vec<u8>,
    },
    /// A header that says "more" for ever: the same fragment again and again.
    Flood {
        class: u8,
        len: usize,
        times: usize,
    },
}

fn frame_damage() -> impl Strategy<Value = FrameDamage> {
    prop_oneof![
        4 => (any::<Index>(), fuzz::mutation()).prop_map(|(frame, damage)| FrameDamage::Within { frame, damage }),
        1 => any::<Index>().prop_map(|frame| FrameDamage::Drop { frame }),
        1 => any::<Index>().prop_map(|frame| FrameDamage::Repeat { frame }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FrameDamage::Swap { a, b }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(at, frame)| FrameDamage::Insert { at, frame }),
        1 => (any::<u8>(), 0..=FRAGMENT_BYTES, 1..8usize)
            .prop_map(|(class, len, times)| FrameDamage::Flood { class, len, times }),
    ]
}

fn damage_frames(frames: &mut Vec<Vec<u8>>, damage: &FrameDamage) {
    let n = frames.len();
    match damage {
        FrameDamage::Insert { at, frame } => frames.insert(at.index(n + 1), frame.clone()),
        FrameDamage::Flood { class, len, times } => {
            let mut frame = vec![class | 0x80];
            frame.resize(len + 1, 0xab);
            frames.extend(std::iter::repeat_n(frame, *times));
        }
        _ if n == 0 => {}
        FrameDamage::Within { frame, damage } => fuzz::apply(&mut frames[frame.index(n)], damage),
        FrameDamage::Drop { frame } => {
            frames.remove(frame.index(n));
        }
        FrameDamage::Repeat { frame } => {
            let i = frame.index(n);
            frames.insert(i, frames[i].clone());
        }
        FrameDamage::Swap { a, b } => frames.swap(a.index(n), b.index(n)),
    }
}

/// Messages, each with its class.
type Messages = Vec<(u8, Vec<u8>)>;

/// Frames to feed a reassembly, the bound it has, and what an honest sender meant by them (when undamaged).
fn fragments() -> impl Strategy<Value = (Vec<Vec<u8>>, usize, Option<Messages>)> {
    let honest = || (messages(), prop::collection::vec(0..3usize, 12));
    prop_oneof![
        2 => honest().prop_map(|(messages, sends)| {
            let frames = outbox_frames(&messages, &sends);
            (frames, 3 * FRAGMENT_BYTES + 2, Some(messages))
        }),
        6 => (honest(), prop::collection::vec(frame_damage(), 1..=4), 1..4 * FRAGMENT_BYTES)
            .prop_map(|((messages, sends), damage, max)| {
                let mut frames = outbox_frames(&messages, &sends);
                for d in &damage {
                    damage_frames(&mut frames, d);
                }
                (frames, max, None)
            }),
        1 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20), 1..200usize)
            .prop_map(|(frames, max)| (frames, max, None)),
    ]
}

#[test]
fn a_hostile_peers_fragments_never_panic_the_link_nor_grow_past_the_bound() {
    fuzz(
        "link_fragments",
        CASES,
        fragments(),
        |(frames, max, honest)| {
            let input: usize = frames.iter().map(Vec::len).sum();
            let (got, error) = bounded(input, 4, || {
                let mut rx = Reassembly::new(max);
                let mut got = Vec::new();
                for frame in &frames {
                    match rx.push(frame) {
                        Ok(Some(message)) => got.push((frame[0] & 0x7f, message)),
                        Ok(None) => {}
                        // The link closes at the first refused frame.
                        Err(e) => return (got, Some(e)),
                    }
                }
                (got, None)
            })?;
            prop_assert!(
                got.iter().all(|(_, m)| m.len() <= max),
                "a message over the bound came through"
            );
            let messages: Vec<Vec<u8>> = got.iter().map(|(_, m)| m.clone()).collect();
            prop_assert_eq!((messages, error.clone()), model(&frames, max));
            if let Some(sent) = honest {
                prop_assert_eq!(error, None);
                // Within a class, messages arrive whole and in the order they were queued.
                for class in 0..CLASSES as u8 {
                    let queued: Vec<&Vec<u8>> = sent
                        .iter()
                        .filter(|(c, _)| (*c).min(CLASSES as u8 - 1) == class)
                        .map(|(_, m)| m)
                        .collect();
                    let arrived: Vec<&Vec<u8>> = got
                        .iter()
                        .filter(|(c, _)| *c == class)
                        .map(|(_, m)| m)
                        .collect();
                    prop_assert_eq!(arrived, queued, "class {}", class);
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The fields of a sync message

/// A CBOR value a samod message (or a hostile one) may hold.
#[derive(Debug, Clone)]
enum Cbor {
    Text(String),
    Bytes(Vec<u8>),
    Uint(u64),
    Int(i64),
    Array(Vec<Cbor>),
    Map(Vec<(String, Cbor)>),
    /// An array inside an array inside ... `depth` deep.
    Deep(usize),
}

fn cbor() -> impl Strategy<Value = Cbor> {
    let leaf = prop_oneof![
        "\\PC{0,12}".prop_map(Cbor::Text),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Cbor::Bytes),
        any::<u64>().prop_map(Cbor::Uint),
        any::<i64>().prop_map(Cbor::Int),
        (1..20_000usize).prop_map(Cbor::Deep),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Cbor::Array),
            prop::collection::vec(("[a-zA-Z]{1,10}", inner), 0..4).prop_map(Cbor::Map),
        ]
    })
}

fn write_cbor(e: &mut minicbor::Encoder<&mut Vec<u8>>, value: &Cbor) {
    let _ = match value {
        Cbor::Text(s) => e.str(s).map(|_| ()),
        Cbor::Bytes(b) => e.bytes(b).map(|_| ()),
        Cbor::Uint(n) => e.u64(*n).map(|_| ()),
        Cbor::Int(n) => e.i64(*n).map(|_| ()),
        Cbor::Array(items) => {
            let _ = e.array(items.len() as u64);
            items.iter().for_each(|i| write_cbor(e, i));
            Ok(())
        }
        Cbor::Map(entries) => {
            let _ = e.map(entries.len() as u64);
            for (k, v) in entries {
                let _ = e.str(k);
                write_cbor(e, v);
            }
            Ok(())
        }
        Cbor::Deep(depth) => {
            for _ in 0..*depth {
                let _ = e.array(1);
            }
            e.u8(0).map(|_| ())
        }
    };
}

/// A message's top-level map: samod's fields (`type`, `senderId`, `documentId`, ...) and others, with
/// `documentId` as text where an honest sender puts it.
fn sync_message() -> impl Strategy<Value = (Option<String>, Vec<u8>)> {
    let key = prop_oneof![
        "type|senderId|targetId|documentId|data|count",
        "[a-zA-Z]{1,10}"
    ];
    (
        prop::collection::vec((key, cbor()), 0..8),
        prop::option::of("[1-9A-HJ-NP-Za-km-z]{20,40}"),
    )
        .prop_map(|(mut fields, doc)| {
            fields.retain(|(k, _)| k != "documentId");
            if let Some(doc) = &doc {
                let at = fields.len() / 2;
                fields.insert(at, ("documentId".into(), Cbor::Text(doc.clone())));
            }
            let mut bytes = Vec::new();
            write_cbor(&mut minicbor::Encoder::new(&mut bytes), &Cbor::Map(fields));
            (doc, bytes)
        })
}

/// CBOR heads that declare more than any message holds: text, bytes, an array and a map of 2^64 - 1, and the
/// 4-byte forms.
const HUGE_HEADS: &[&[u8]] = &[
    &[0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x7a, 0xff, 0xff, 0xff, 0xff],
    &[0x9a, 0xff, 0xff, 0xff, 0xff],
    &[0x9f, 0x9f, 0x9f, 0x9f],
    &[0xbf, 0xbf],
];

/// A message with a huge head spliced in, where a value should start or anywhere.
fn huge_headed() -> impl Strategy<Value = (Option<String>, Vec<u8>, Vec<u8>)> {
    (
        sync_message(),
        prop::sample::select(HUGE_HEADS),
        any::<Index>(),
    )
        .prop_map(|((doc, original), head, at)| {
            let mut input = original.clone();
            let i = at.index(input.len() + 1);
            input.splice(i..i, head.iter().copied());
            (doc, original, input)
        })
}

#[test]
fn a_hostile_sync_message_never_panics_the_classifier_and_its_document_is_its_own() {
    let input = prop_oneof![4 => hostile_bytes(sync_message()), 1 => huge_headed()];
    fuzz(
        "sync_message_fields",
        CASES,
        input,
        |(doc, original, input)| {
            // minicbor's skip keeps a stack entry (16 bytes) per level of nesting it steps into, and while the stack
            // grows it holds the old buffer and the new: up to 48 bytes a byte of message, never a declared length.
            let (found, sender) = bounded(input.len(), 64, || {
                (document_id(&input), text_field(&input, "senderId"))
            })?;
            for field in [found, sender].into_iter().flatten() {
                // Read in place: a field is a slice of the message itself, never a copy of a declared length.
                let range = input.as_ptr_range();
                // (An empty field may point just past the message's last byte.)
                let inside = range.contains(&field.as_ptr()) || field.as_ptr() == range.end;
                prop_assert!(inside && field.len() <= input.len());
            }
            if input == original {
                // Keys before documentId are skipped whatever they hold, however deep.
                prop_assert_eq!(found, doc.as_deref());
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Peer ids

fn peer_bytes() -> impl Strategy<Value = ((), Vec<u8>)> {
    any::<[u8; 32]>().prop_map(|seed| {
        let device = SecretKey::from_seed(seed).public();
        ((), peer_id(&device).expect("an ed25519 key").to_bytes())
    })
}

#[test]
fn a_hostile_peer_id_never_panics_and_names_the_one_device_whose_key_it_holds() {
    fuzz(
        "peer_id",
        CASES,
        hostile_bytes(peer_bytes()),
        |((), original, input)| {
            let Ok(peer) = PeerId::from_bytes(&input) else {
                prop_assert!(input != original, "a peer id of ours does not parse");
                return Ok(());
            };
            match bounded(input.len(), 4, || device_of_peer(&peer))? {
                Some(device) => prop_assert_eq!(
                    peer_id(&device).ok(),
                    Some(peer),
                    "another device's peer id"
                ),
                None => prop_assert!(input != original, "our peer id names no device"),
            }
            Ok(())
        },
    );
}
