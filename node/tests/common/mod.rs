//! Runs the `popmesh` binary the way an operator would: one-shot commands, and sites of running daemons (`site`).

#[allow(unused_imports)]
pub use site::popmesh;

pub mod hostile;
pub mod hostile_json;
pub mod hostile_routes;
pub mod pg;
pub mod site;
pub mod stranger;
