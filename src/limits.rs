//! The worker's descriptor budget (DESIGN §2: a fault of the worker's own machine is never
//! an engine's failure, so the worker must not cause one).
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (raising the hard limit
//! needs `CAP_SYS_RESOURCE`, which a worker does not have). From the result a fixed share
//! is set aside for Postgres, NATS, the status port, telemetry and the probes in flight;
//! idle keep-alive connections to engines get the rest ([`DescriptorBudget::keepalive`]).

use std::io;

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard one. Returns both, before and after; on a
/// refusal the limits are left as they were and the error says why.
pub fn raise_nofile_limit() -> io::Result<NofileLimits> {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get()?;
    if soft_before < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(NofileLimits {
        soft_before,
        soft: hard,
        hard,
    })
}

/// The current soft descriptor limit.
pub(crate) fn soft_nofile_limit() -> io::Result<u64> {
    rlimit::Resource::NOFILE.get().map(|(soft, _)| soft)
}

/// Descriptors set aside for everything but probes and the status port: stdio, the
/// runtime's epoll and wake-up descriptors, the signal pipe, the Postgres pool (6), NATS
/// (1), the OTLP exporters (a few), migrations and the odd file. Measured at 16 in use
/// besides the engine connections (RELIABILITY.md); four times that leaves room without
/// starving the keep-alive pool.
pub(crate) const FIXED_RESERVE: u64 = 64;

/// Idle keep-alive connections at most, whatever the descriptor limit allows. The prober
/// keeps only the socket of an idle connection (its HTTP state and buffers are made per
/// probe, except for up to 256 at addresses several games share), well under 1 KiB of the worker's memory each (`scripts/bench.sh stack`), plus
/// the kernel's socket buffers, which are not the worker's RSS. 16,384 keeps every engine
/// of a 10,000-engine fleet at distinct addresses alive within a few MiB; beyond it a
/// probe pays a connect (tens of µs of CPU on loopback, one round trip on a LAN) and no
/// memory.
pub(crate) const KEEPALIVE_CAP: usize = 16_384;

/// The default `RTMANAGER_PROBE_MAX_CONCURRENCY` (DESIGN §15): a quarter of the
/// descriptors left after the fixed reserve and the status port (each probe in flight may
/// hold two; the rest stays for kept-alive connections), between 16 (the seed's default)
/// and 256. Hung engines cost a slot for their timeout each, so slots are what lets the
/// healthy games keep their interval through a storm: 256 slots absorb 1,000 hung engines
/// at a 2 s timeout in 8 s of each 15 s tick, for about 5 MB of connection buffers.
pub(crate) fn default_concurrency(soft_limit: u64, http_connections: usize) -> usize {
    let spare = soft_limit.saturating_sub(FIXED_RESERVE + 1 + http_connections as u64);
    usize::try_from(spare / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 256)
}

/// How the descriptors under the soft limit are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    pub soft_limit: u64,
    /// Fixed reserve + status port (listener and its connection cap) + probes in flight.
    pub reserved: u64,
    /// Idle keep-alive connections to engines, at most: what is left, up to
    /// [`KEEPALIVE_CAP`].
    pub keepalive: usize,
    /// Probes in flight at most: as configured, or [`default_concurrency`].
    pub max_concurrency: usize,
}

impl DescriptorBudget {
    /// `max_concurrency` probes may each hold a connection while in flight (plus one
    /// closing behind it); `http_connections` is the status port's cap.
    pub fn new(soft_limit: u64, max_concurrency: usize, http_connections: usize) -> Self {
        let reserved = FIXED_RESERVE + 1 + http_connections as u64 + 2 * max_concurrency as u64;
        let keepalive = soft_limit.saturating_sub(reserved);
        Self {
            soft_limit,
            reserved,
            keepalive: usize::try_from(keepalive)
                .unwrap_or(usize::MAX)
                .min(KEEPALIVE_CAP),
            max_concurrency,
        }
    }

    /// Raises the descriptor limit as far as allowed and shares it out, logging both: the
    /// start-up policy of `healthprobe run`. A refusal keeps the soft limit (or 1024 when it
    /// cannot even be read) and is logged, never fatal.
    /// `max_concurrency` unset: [`default_concurrency`] for the limit reached.
    pub fn at_start(max_concurrency: Option<usize>, http_connections: usize) -> Self {
        let soft_limit = match raise_nofile_limit() {
            Ok(nofile) => {
                tracing::info!(
                    soft_before = nofile.soft_before,
                    soft = nofile.soft,
                    hard = nofile.hard,
                    "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
                );
                nofile.soft
            }
            Err(e) => {
                let soft = soft_nofile_limit().unwrap_or(1024);
                tracing::warn!(error = %e, soft, "cannot raise the descriptor limit; keeping the soft one");
                soft
            }
        };
        let max_concurrency =
            max_concurrency.unwrap_or_else(|| default_concurrency(soft_limit, http_connections));
        let budget = Self::new(soft_limit, max_concurrency, http_connections);
        tracing::info!(
            max_concurrency,
            soft_limit = budget.soft_limit,
            reserved = budget.reserved,
            keepalive_connections = budget.keepalive,
            "descriptor budget: probes beyond the kept-alive connections use a connection closed after use"
        );
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_rest_to_keep_alive() {
        let budget = DescriptorBudget::new(1024, 16, 256);
        assert_eq!(budget.reserved, 64 + 1 + 256 + 32);
        assert_eq!(budget.keepalive, 1024 - 353);
        assert_eq!(DescriptorBudget::new(100, 16, 256).keepalive, 0);
        assert_eq!(
            DescriptorBudget::new(1 << 20, 16, 256).keepalive,
            KEEPALIVE_CAP
        );
    }

    #[test]
    fn the_default_concurrency_follows_the_descriptor_limit() {
        assert_eq!(default_concurrency(1024, 256), (1024 - 321) / 4);
        assert_eq!(default_concurrency(1 << 20, 256), 256);
        assert_eq!(default_concurrency(256, 256), 16, "never below the seed's");
        let c = default_concurrency(1024, 256);
        assert!(DescriptorBudget::new(1024, c, 256).keepalive >= 300);
    }

    #[test]
    fn raising_the_soft_limit_reaches_the_hard_one() {
        let limits = raise_nofile_limit().expect("raising to the hard limit is always allowed");
        assert_eq!(limits.soft, limits.hard);
        assert!(limits.soft >= limits.soft_before);
        assert_eq!(soft_nofile_limit().unwrap(), limits.soft);
    }
}
