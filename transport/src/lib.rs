//! popmesh's networking: how devices find each other, prove who they are, and move documents and blobs.
//!
//! Today this crate maps the one device key onto the identities the networking stacks use ([`identity`]). The site
//! mesh (libp2p over TCP with the site's pre-shared key, noise and yamux; mDNS and bootstrap discovery; certificate
//! exchange on connect; samod document sync bound to the authenticated peer id) and the iroh-blobs media transport
//! land here next, so that `node` only wires them to storage and the HTTP API.
//!
//! Architecture Invariant: this crate decides nothing about the site's data. Whether a peer is enrolled, a receipt
//! valid, or a seat available is asked of `popmesh-crdt`.

pub mod identity;
