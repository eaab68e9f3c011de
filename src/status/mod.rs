//! What the worker tells about itself (`GET /status`, `GET /healthz`, `healthprobe status`).
//!
//! - [`board`]: the status board: the receivers of the `watch` on which each job (the run
//!   loop, the membership heartbeat, the relay's leadership and supervisor) publishes its
//!   status, read by the HTTP surface;
//! - [`rules`]: pure rules, observations in, a typed report out;
//! - [`render`]: JSON, plain text and the operator's tables.
//!
//! Nothing here imports the worker or the events; they import the status types from here.

mod board;
pub mod render;
mod rules;

pub(crate) use board::TickEnded;
pub use board::{
    BoardSnapshot, HoldSummary, MembersView, Progress, RelayHealth, RelayRole, StatusBoard,
    TickSummary,
};
pub use render::{GameJson, games_table, member_json, members_table};
pub use rules::{Component, Level, Observed, StatusReport, evaluate};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests;
