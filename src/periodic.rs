//! One way to run a loop: a job takes turns; the driver waits between them and publishes
//! the job's status on the job's own `watch` after each turn.
//!
//! After each turn the job says what comes next ([`Next`]). Periods run from the start of
//! one turn to the start of the next, so a turn longer than the period is followed at once
//! by the next one and the one after keeps the period: missed turns are delayed, never
//! bunched (tokio's `MissedTickBehavior::Delay`). Retries wait the next delay of a back-off
//! from [`crate::retry`] (exponential, with jitter), reset by the next turn that asks for
//! the period or to go on at once. A job may name an early wake-up (a notification, a
//! watch that changed) that ends any wait.
//!
//! The driver stops between turns once its token is cancelled (a turn in progress is not
//! cut; each turn is bounded and sees the token) and hands the job back, so the job's
//! shutdown step (finish the probes in flight, leave the membership, the relay's drain
//! while the lock is held, releasing the lock) stays explicit in its caller.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Backoff};

/// What a job asks for after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The next turn one period after this one started (at once if that has passed).
    Period,
    /// The next turn at once (more work is waiting).
    AtOnce,
    /// The turn failed: the next one after the back-off's next delay.
    Retry,
    /// The next turn after this delay, the back-off left as it is (neither a success nor
    /// a failure, e.g. waiting for a first connection).
    After(Duration),
    /// No more turns: the driver returns the job.
    Stop,
}

/// A job the driver runs turn after turn.
pub(crate) trait Periodic: Send {
    /// What the job tells the status surface, published after every turn when it changed.
    type Status: PartialEq + Send + Sync;

    /// From the start of one turn to the start of the next, for [`Next::Period`]. Read
    /// after each turn, so it may depend on the job's state.
    fn period(&self) -> Duration;

    /// The back-off of [`Next::Retry`]. Jobs that never retry keep this default (the
    /// period, with jitter).
    fn backoff(&self) -> Backoff {
        retry::backoff(self.period(), self.period())
    }

    /// One turn. `stop` is the driver's token: a long turn may end early when it fires.
    fn turn(&mut self, stop: &CancellationToken) -> impl Future<Output = Next> + Send;

    /// Resolves when the job should take its next turn early, ending any wait (dropped
    /// when the wait ends otherwise, so it must be cancel-safe). Default: never.
    fn wake(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// The job's status as of now.
    fn status(&self) -> Self::Status;
}

/// Runs `job` until `stop` is cancelled or a turn answers [`Next::Stop`], publishing
/// [`Periodic::status`] on `status` after every turn (watchers are woken only when it
/// changed). The first turn starts at once. Returns the job for its shutdown step.
pub(crate) async fn run<J: Periodic>(
    mut job: J,
    stop: &CancellationToken,
    status: &watch::Sender<J::Status>,
) -> J {
    let mut backoff = job.backoff();
    while !stop.is_cancelled() {
        let started = Instant::now();
        let next = job.turn(stop).await;
        publish(status, job.status());
        let resume = match next {
            Next::Stop => break,
            Next::AtOnce => {
                backoff.reset();
                continue;
            }
            Next::Period => {
                backoff.reset();
                started + job.period()
            }
            Next::Retry => Instant::now() + backoff.next_delay(),
            Next::After(delay) => Instant::now() + delay,
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            () = job.wake() => {}
            () = tokio::time::sleep_until(resume) => {}
        }
    }
    job
}

/// Replaces the value on `status`, waking its watchers only when it changed.
pub(crate) fn publish<S: PartialEq>(status: &watch::Sender<S>, value: S) {
    status.send_if_modified(|current| {
        if *current == value {
            return false;
        }
        *current = value;
        true
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    /// Answers from a script, records when each turn started, counts its turns as status.
    struct Scripted {
        answers: VecDeque<Next>,
        /// How long each turn takes (virtual time).
        turn_takes: Duration,
        started: Vec<Instant>,
        wake: Arc<Notify>,
        epoch: Instant,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Next>) -> Self {
            Self {
                answers: answers.into_iter().collect(),
                turn_takes: Duration::ZERO,
                started: Vec::new(),
                wake: Arc::new(Notify::new()),
                epoch: Instant::now(),
            }
        }

        /// Start of each turn, from the job's creation.
        fn starts(&self) -> Vec<Duration> {
            self.started.iter().map(|t| *t - self.epoch).collect()
        }
    }

    impl Periodic for Scripted {
        type Status = usize;

        fn period(&self) -> Duration {
            PERIOD
        }

        fn backoff(&self) -> Backoff {
            retry::backoff(Duration::from_secs(1), Duration::from_secs(8))
        }

        async fn turn(&mut self, _stop: &CancellationToken) -> Next {
            self.started.push(Instant::now());
            tokio::time::sleep(self.turn_takes).await;
            self.answers.pop_front().unwrap_or(Next::Stop)
        }

        fn wake(&mut self) -> impl Future<Output = ()> + Send {
            self.wake.notified()
        }

        fn status(&self) -> usize {
            self.started.len()
        }
    }

    fn secs(s: &[u64]) -> Vec<Duration> {
        s.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    async fn drive(job: Scripted) -> Scripted {
        let (status, _) = watch::channel(0);
        run(job, &CancellationToken::new(), &status).await
    }

    #[tokio::test(start_paused = true)]
    async fn turns_start_a_period_apart_from_the_first_at_once() {
        let job = drive(Scripted::new([Next::Period, Next::Period, Next::Stop])).await;
        assert_eq!(job.starts(), secs(&[0, 10, 20]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_longer_than_the_period_delays_the_next_never_bunches() {
        let mut job = Scripted::new([Next::Period, Next::Period, Next::Period, Next::Stop]);
        job.turn_takes = Duration::from_secs(25);
        let job = drive(job).await;
        // Each turn ends 25 s after it started: the next starts at once, one at a time.
        assert_eq!(job.starts(), secs(&[0, 25, 50, 75]));
        let mut job = Scripted::new([Next::Period, Next::Period, Next::Stop]);
        job.turn_takes = Duration::from_secs(4);
        let job = drive(job).await;
        // A turn shorter than the period: start to start, not end to start.
        assert_eq!(job.starts(), secs(&[0, 10, 20]));
    }

    #[tokio::test(start_paused = true)]
    async fn at_once_and_after_wait_as_asked() {
        let job = drive(Scripted::new([
            Next::AtOnce,
            Next::AtOnce,
            Next::After(Duration::from_secs(3)),
            Next::Stop,
        ]))
        .await;
        assert_eq!(job.starts(), secs(&[0, 0, 0, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_with_jitter_and_a_success_resets_the_back_off() {
        let job = drive(Scripted::new([
            Next::Retry,
            Next::Retry,
            Next::Retry,
            Next::Period,
            Next::Retry,
            Next::Stop,
        ]))
        .await;
        let starts = job.starts();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        // Floor 1 s doubling: 1, 2, 4 s, each plus up to itself of jitter.
        for (gap, floor) in gaps.iter().zip([1, 2, 4]) {
            let floor = Duration::from_secs(floor);
            assert!(*gap >= floor && *gap <= floor * 2, "{gaps:?}");
        }
        assert_eq!(gaps[3], PERIOD, "{gaps:?}");
        // After the period's success the back-off starts again from its floor.
        assert!(gaps[4] <= Duration::from_secs(2), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_ends_the_wait_and_the_period_counts_from_that_turn() {
        let job = Scripted::new([Next::Period, Next::Period, Next::Period, Next::Stop]);
        let wake = job.wake.clone();
        let driver = tokio::spawn(drive(job));
        tokio::time::sleep(Duration::from_secs(4)).await;
        wake.notify_one();
        let job = driver.await.unwrap();
        assert_eq!(job.starts(), secs(&[0, 4, 14, 24]));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_wait_at_once_and_hands_the_job_back() {
        let stop = CancellationToken::new();
        let (status, _) = watch::channel(0);
        let driver = tokio::spawn({
            let stop = stop.clone();
            async move { run(Scripted::new([Next::Period; 5]), &stop, &status).await }
        });
        tokio::time::sleep(Duration::from_secs(15)).await;
        let cancelled_at = Instant::now();
        stop.cancel();
        let job = driver.await.unwrap();
        assert_eq!(Instant::now(), cancelled_at, "the wait did not end at once");
        assert_eq!(job.starts(), secs(&[0, 10]));
        assert_eq!(job.answers.len(), 3, "the job comes back as it was");
        // Cancelled before the first turn: no turn at all.
        let (status, _) = watch::channel(0);
        let job = run(Scripted::new([Next::Period]), &stop, &status).await;
        assert!(job.started.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_is_published_after_each_turn_and_only_when_it_changed() {
        let (status, mut seen) = watch::channel(0);
        let stop = CancellationToken::new();
        let driver = tokio::spawn({
            let stop = stop.clone();
            async move { run(Scripted::new([Next::Period; 3]), &stop, &status).await }
        });
        for turns in 1..=3 {
            seen.changed().await.expect("the driver publishes");
            assert_eq!(*seen.borrow_and_update(), turns);
        }
        stop.cancel();
        driver.await.unwrap();

        let (status, seen) = watch::channel(7);
        publish(&status, 7);
        assert!(
            !seen.has_changed().unwrap(),
            "an unchanged status woke watchers"
        );
        publish(&status, 8);
        assert!(seen.has_changed().unwrap());
    }
}
