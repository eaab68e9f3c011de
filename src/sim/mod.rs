//! The simulator: a fleet of fake game engines that plays the runtime manager's part in the
//! demo, Docker Compose, tests and benchmarks (`healthprobe fleet`). Built only with the
//! `sim` cargo feature (on by default); the worker's modules never import it.

mod args;
mod behavior;
mod fleet;

pub use args::FleetArgs;
pub use behavior::{Behavior, Mix, Phase, Schedule};
pub use fleet::*;
