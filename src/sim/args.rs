//! `healthprobe fleet`'s flags: the binary registers the command when built with the
//! `sim` feature, so the worker's own configuration knows nothing of the simulator.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::config::positive_duration;

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Number of engines.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub engines: u32,
    /// Behaviors by weight: healthy, failing, slow, flapping, scheduled.
    #[arg(long, default_value = "healthy=7,flapping=2,failing=1")]
    pub mix: super::Mix,
    /// A flapping engine is healthy this long, then failing this long, and so on.
    #[arg(long, default_value = "10s", value_parser = positive_duration("--flap-period"))]
    pub flap_period: Duration,
    /// A slow engine answers 200 after this long (a timeout if beyond the probe timeout).
    #[arg(long, default_value = "3s", value_parser = positive_duration("--slow-delay"))]
    pub slow_delay: Duration,
    /// The cycle `scheduled` engines follow, e.g. `healthy:20s,failing:15s,slow:10s`.
    #[arg(long, default_value = "healthy:20s,failing:20s")]
    pub schedule: super::Schedule,
    /// HTTP status a failing engine answers.
    #[arg(long, default_value = "503", value_parser = clap::value_parser!(u16).range(100..=599))]
    pub failing_status: u16,
    /// Engine (and game) names are PREFIX001, PREFIX002, ...
    #[arg(long, default_value = "fleet-")]
    pub prefix: String,
    /// Address the fleet listens on; port 0 picks a free one.
    #[arg(long, env = "HEALTHPROBE_FLEET_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Base URL the worker reaches the fleet at (default http://<bound address>).
    #[arg(long, env = "HEALTHPROBE_FLEET_ADVERTISE")]
    pub advertise: Option<String>,
    /// Record each engine as a running game (game_id = engine name) in DATABASE_URL, and
    /// mark them stopped on exit.
    #[arg(long)]
    pub register: bool,
    /// With --register: leave the records running on exit.
    #[arg(long, requires = "register")]
    pub keep_records: bool,
    /// Postgres URL, needed with --register.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}
