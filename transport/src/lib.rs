//! popmesh's networking: how devices find each other, prove who they are, and move documents.
//!
//! - [`identity`] maps the one device key onto the identities the networking stacks use.
//! - [`mesh`] runs the site mesh: libp2p over TCP with the site's pre-shared key, noise and yamux; mDNS and
//!   bootstrap discovery; one connection and one sync session per pair of peers; admission by certificate.
//! - [`link`] is one site link: the hello exchange, then samod's sync messages in bounded frames, bound to the
//!   authenticated peer id.
//! - [`outbox`] is what a link sends first: sync messages by class (money first), in fragments, under an optional
//!   rate cap for a thin uplink.
//!
//! Architecture Invariant: this crate decides nothing about the site's data. Whether a peer is enrolled, a receipt
//! valid, or a seat available is asked of `popmesh-crdt` (through the node's [`link::Gate`]).

pub mod identity;
pub mod link;
pub mod mesh;
pub mod outbox;

pub use link::{Gate, Hello, LinkPolicy};
pub use mesh::{LinkReason, Mesh, MeshConfig, PeerStatus};
