//! What a link sends first when it cannot send everything at once.
//!
//! samod hands the link whole sync messages, one per document exchange, some of them large (a document's full
//! history when a peer first asks for it). On a thin uplink, sending them in the order samod produced them would
//! let a large media manifest or telemetry history hold back the receipts behind it. So every message is put in a
//! *class* by the document it concerns (the node decides: receipts first, then bookings, passes and the directory,
//! then telemetry, then the rest), and sent in fragments of at most [`FRAGMENT_BYTES`]: the writer always sends
//! the next fragment of the highest class that has one. A message of a higher class therefore waits for at most
//! one fragment, never for a whole large message.
//!
//! On the wire each fragment is one length-delimited frame: a header byte (class in the low bits, "more of this
//! message follows" in the top bit) and the bytes. Within a class, fragments are sent in order and messages never
//! interleave, so the receiver reassembles each class on its own ([`Reassembly`]). Every message about one
//! document falls in one class, so each document's messages arrive in the order they were sent; only messages
//! about different documents overtake each other, which the sync protocol allows.

use std::collections::VecDeque;

/// Classes, highest first (0).
pub const CLASSES: usize = 4;
/// Bytes of message per fragment.
pub const FRAGMENT_BYTES: usize = 16 * 1024;
const MORE: u8 = 0x80;

/// Messages waiting to be sent, by class.
#[derive(Debug, Default)]
pub struct Outbox {
    queues: [VecDeque<(Vec<u8>, usize)>; CLASSES],
    queued_bytes: usize,
}

impl Outbox {
    /// Queues a whole message in `class` (clamped to the lowest class).
    pub fn push(&mut self, class: u8, message: Vec<u8>) {
        let class = usize::from(class).min(CLASSES - 1);
        self.queued_bytes += message.len();
        self.queues[class].push_back((message, 0));
    }

    /// Bytes of messages not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// The next frame to send: the next fragment of the highest class waiting. Returns the frame and whether it
    /// ends a message.
    pub fn next_frame(&mut self) -> Option<(Vec<u8>, bool)> {
        let (class, queue) = self
            .queues
            .iter_mut()
            .enumerate()
            .find(|(_, q)| !q.is_empty())?;
        let (message, offset) = queue.front_mut()?;
        let end = (*offset + FRAGMENT_BYTES).min(message.len());
        let last = end == message.len();
        let mut frame = Vec::with_capacity(1 + end - *offset);
        frame.push(class as u8 | if last { 0 } else { MORE });
        frame.extend_from_slice(&message[*offset..end]);
        self.queued_bytes -= end - *offset;
        *offset = end;
        if last {
            queue.pop_front();
        }
        Some((frame, last))
    }
}

/// Why a frame was refused (the link is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown class {0}")]
    BadClass(u8),
    #[error("a message of more than {0} bytes")]
    TooLarge(usize),
}

/// Reassembles messages from fragments, one buffer per class.
#[derive(Debug)]
pub struct Reassembly {
    parts: [Vec<u8>; CLASSES],
    max: usize,
}

impl Reassembly {
    /// `max`: the largest whole message accepted.
    pub fn new(max: usize) -> Self {
        Self {
            parts: Default::default(),
            max,
        }
    }

    /// Takes one frame; returns a message when the frame completes one.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (&header, bytes) = frame.split_first().ok_or(FrameError::Empty)?;
        let class = header & !MORE;
        let part = self
            .parts
            .get_mut(usize::from(class))
            .ok_or(FrameError::BadClass(class))?;
        if part.len() + bytes.len() > self.max {
            return Err(FrameError::TooLarge(self.max));
        }
        part.extend_from_slice(bytes);
        if header & MORE != 0 {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(part)))
        }
    }
}

/// The document a samod message is about (its CBOR map's `documentId`), if any.
pub fn document_id(message: &[u8]) -> Option<&str> {
    text_field(message, "documentId")
}

/// A text field of a samod message's top-level CBOR map (`senderId`, `type`, `documentId`, ...), if present.
pub fn text_field<'a>(message: &'a [u8], field: &str) -> Option<&'a str> {
    let mut d = minicbor::Decoder::new(message);
    let entries = d.map().ok()??;
    for _ in 0..entries {
        let key = d.str().ok()?;
        if key == field {
            return d.str().ok();
        }
        d.skip().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_overtakes_a_large_manifest_after_one_fragment() {
        let mut out = Outbox::default();
        let manifest = vec![3u8; 5 * FRAGMENT_BYTES + 10];
        out.push(3, manifest.clone());
        let (first, last) = out.next_frame().expect("a fragment");
        assert!(!last);
        assert_eq!(first[0], 3 | MORE);
        out.push(0, b"receipt".to_vec());
        out.push(2, b"telemetry".to_vec());
        let (next, last) = out.next_frame().expect("the receipt");
        assert!(last);
        assert_eq!(&next[1..], b"receipt");
        assert_eq!(&out.next_frame().expect("telemetry").0[1..], b"telemetry");
        let mut rx = Reassembly::new(1 << 20);
        assert_eq!(rx.push(&first), Ok(None));
        let mut got = None;
        while let Some((frame, _)) = out.next_frame() {
            got = rx.push(&frame).expect("well formed");
        }
        assert_eq!(got, Some(manifest), "reassembled whole");
        assert_eq!(out.queued_bytes(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut rx = Reassembly::new(100);
        assert_eq!(rx.push(&[]), Err(FrameError::Empty));
        assert_eq!(rx.push(&[9, 1]), Err(FrameError::BadClass(9)));
        assert_eq!(rx.push(&[MORE, 1, 2]), Ok(None));
        assert_eq!(rx.push(&[0u8].repeat(120)), Err(FrameError::TooLarge(100)));
    }

    #[test]
    fn the_document_of_a_sync_message_is_read_from_its_cbor() {
        // {"type": "sync", "documentId": "abc", "data": h'00'}
        let mut msg = vec![0xa3, 0x64];
        msg.extend_from_slice(b"type");
        msg.push(0x64);
        msg.extend_from_slice(b"sync");
        msg.push(0x6a);
        msg.extend_from_slice(b"documentId");
        msg.push(0x63);
        msg.extend_from_slice(b"abc");
        msg.extend_from_slice(&[0x64, b'd', b'a', b't', b'a', 0x41, 0x00]);
        assert_eq!(document_id(&msg), Some("abc"));
        assert_eq!(document_id(&[0xde, 0xad]), None);
        assert_eq!(
            document_id(&[0xa1, 0x64, b't', b'y', b'p', b'e', 0x64]),
            None
        );
    }
}
