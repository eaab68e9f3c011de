//! What the worker tells about itself (`GET /status`, `GET /healthz`, `healthprobe status`).
//!
//! - [`board`]: the status board the run loop, the membership heartbeat and the relay's
//!   leadership write and the HTTP surface reads;
//! - [`rules`]: pure rules, observations in, a typed report out;
//! - [`render`]: JSON, plain text and the operator's tables.
//!
//! Nothing here imports the worker; the worker imports this.

mod board;
pub mod render;
mod rules;

pub use board::{
    BoardSnapshot, HoldSummary, MembersView, Progress, StatusBoard, TickEnded, TickSummary,
    WorkerView,
};
pub use render::{GameJson, games_table, member_json, members_table};
pub use rules::{Component, Level, Observed, RelayHealth, StatusReport, evaluate};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests;
