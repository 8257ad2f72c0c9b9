//! popmesh's device core: every decision a device makes, as sans-IO state machines.
//!
//! The node (`popmesh run`) and the chaos simulator (`popmesh sim`) are two shells around this crate: they feed it
//! what happened (`handle_*`), ask it what must happen next (`poll_*`), and carry out its effects, which come back as
//! data. Time is passed in; nothing here reads a clock, touches a disk or opens a socket. So what the simulator
//! proves under partitions, crashes and storage faults is a property of the code the node runs.
//!
//! - [`authorship`]: who may author which changes in which document, judged on every sync message a peer sends
//!   before the sync engine applies it (an enrolled device that goes bad writes only its own parts).
//! - [`desk`]: the payment desk: readiness after a start, idempotency keys across shows, batching, ledger pages,
//!   and the rule that no payment is answered before its write is durable.
//! - [`durability`]: which bytes of a document a write must make durable so that no answer rests on anything that
//!   is not on disk (whole saves after a failed write, replays).
//! - [`gate`]: admission of a peer when a link opens, the class each document's messages travel in, and who may
//!   read and write what.
//! - [`librarian`]: finding the site directory, enrolling in it, and opening every document it registers.
//! - [`links`]: the mesh's rules between two devices: who dials, which duplicate connection closes, backoff,
//!   blocking.
//! - [`topology`]: the site's shape: relays (edge boxes, or elected kiosks), the links each device holds within
//!   named bounds, and which documents each device holds and is told of.
//! - [`suggest`]: what a kiosk suggests next (a Thompson-sampling bandit over the site's suggestion tallies) and
//!   "others also booked" past a minimum count.
//! - [`rebalancer`]: when a device gives quota to a connected peer running low.
//! - [`watchman`]: who this device reaches, the incidents it records when a peer drops out, rehearsal answers.
//! - [`mutation`]: deliberately broken decisions, for the tests that prove the simulator catches them.

pub mod authorship;
pub mod desk;
pub mod durability;
pub mod gate;
pub mod librarian;
pub mod links;
pub mod mutation;
pub mod rebalancer;
pub mod suggest;
pub mod topology;
pub mod watchman;

pub use desk::{Desk, DeskAction, DeskError, StoreFault, Ticket};
pub use durability::{Durability, Save};
pub use mutation::{Mutation, Mutations};
