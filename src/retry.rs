//! Retries with back-off, from one place: exponential from a floor to a cap, with jitter
//! (each delay gets a random share of itself added), so replicas that lost the same
//! dependency at the same instant do not all come back in step. The delays come from
//! `backon`; every loop that retries (start-up against Postgres, the relay and its
//! supervisor, `tail`) takes them from here.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Endless delays from `min` doubling up to `max`, each with jitter.
pub fn backoff(min: Duration, max: Duration) -> Backoff {
    Backoff {
        min,
        max,
        delays: build(min, max),
    }
}

fn build(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A back-off in progress: [`Backoff::next_delay`] after each failure, [`Backoff::reset`]
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Back to the floor, after a success.
    pub fn reset(&mut self) {
        self.delays = build(self.min, self.max);
    }

    /// Waits the next delay; `false` when `stop` fired first.
    pub async fn pause(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut backoff = backoff(min, max);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= min && delays[0] < min * 2, "{delays:?}");
        // Jitter adds at most the delay itself on top of the capped delay.
        assert!(delays.iter().all(|d| *d <= max * 2), "{delays:?}");
        assert!(delays[11] >= max, "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() < min * 2);
    }
}
