//! The probe lanes: long-lived tasks, at most one per concurrency slot, each running the
//! probes the tick hands it one after another, so a probe costs no task of its own.
//!
//! Why: a task per probe (its spawn, its allocation, the join set's bookkeeping and the
//! map from task to game) cost 6.5 µs of CPU per probe at one address, a quarter of the
//! whole worker's: `benches/stack.rs`, the Prober driven by 256 lanes against the same
//! Prober spawned once per probe by one dispatcher, 17.3 against 23.8 µs per probe and
//! 62,361 against 52,455 probes/s (medians of 7 alternating rounds, BENCHMARKS.md).
//!
//! The tick hands a [`Job`] to an idle lane (one is started when none is idle and there
//! are fewer than `max`), and takes [`Finished`] probes back in the order they end, from
//! this tick or an earlier one: a lane busy with a hung engine simply stays busy beside
//! the next tick, as a task in flight did. A probe that panics is caught in its lane and
//! comes back as [`Finished::outcome`]'s `Err`, so the lane lives on. A lane ends when it
//! ran no probe for [`LANE_IDLE_TICKS`] ticks, or when the worker is dropped (the join set
//! aborts them all).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::probe::spec::ProbeSpec;
use crate::probe::{ProbeOutcome, Prober};
use crate::store::RuntimeRecord;

/// A lane that ran no probe for this many whole ticks ends: the lanes a storm or a large
/// `RTMANAGER_PROBE_MAX_CONCURRENCY` called up do not outlive their need. A lane holds
/// about 4.5 KiB (its probe's state, kept between probes); at steady state every tick uses
/// the lanes it needs, and the ones freed last are used first, so the surplus ages out.
const LANE_IDLE_TICKS: u64 = 2;

/// One probe for a lane: the game, how to probe it, the concurrency slot it holds until
/// its probe ends, and its span when spans are exported.
pub(super) struct Job {
    pub record: RuntimeRecord,
    pub spec: Arc<ProbeSpec>,
    pub permit: OwnedSemaphorePermit,
    pub span: Option<tracing::Span>,
}

/// A probe that ended: its game, and its outcome or, when the probe panicked (a bug in the
/// worker, never the engine's doing), the panic's message.
pub(super) struct Finished {
    lane: usize,
    pub record: RuntimeRecord,
    pub outcome: Result<ProbeOutcome, String>,
}

/// Where the tick leaves a lane its next job, or tells it to end: a place for one job and
/// a wake-up (a channel would allocate a block of 32 places per lane).
#[derive(Default)]
struct Handoff {
    job: Mutex<Option<Job>>,
    ready: Notify,
    retired: AtomicBool,
}

/// A lane with no job, and the tick that last gave it one.
struct IdleLane {
    lane: usize,
    since: u64,
}

pub(super) struct Lanes {
    prober: Prober,
    max: usize,
    /// Each lane's handoff, by lane number; `None`: a number free for a new lane.
    lanes: Vec<Option<Arc<Handoff>>>,
    free_numbers: Vec<usize>,
    live: usize,
    /// Lanes with no job, the last freed at the back (its task is the likeliest to be
    /// warm, and the front ages out).
    idle: VecDeque<IdleLane>,
    /// The tick, as [`Self::retire_idle`] was last told.
    generation: u64,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    tasks: JoinSet<()>,
}

impl Lanes {
    pub(super) fn new(prober: Prober, max: usize) -> Self {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        Self {
            prober,
            max,
            lanes: Vec::new(),
            free_numbers: Vec::new(),
            live: 0,
            idle: VecDeque::new(),
            generation: 0,
            finished_tx,
            finished,
            tasks: JoinSet::new(),
        }
    }

    /// Probes started and not yet taken back.
    pub(super) fn busy(&self) -> usize {
        self.live - self.idle.len()
    }

    /// Whether [`Self::start`] can take a job now.
    pub(super) fn has_room(&self) -> bool {
        !self.idle.is_empty() || self.live < self.max
    }

    /// Hands `job` to an idle lane, or to a new one. The caller checked [`Self::has_room`].
    pub(super) fn start(&mut self, job: Job) {
        let lane = match self.idle.pop_back() {
            Some(idle) => idle.lane,
            None => {
                assert!(self.live < self.max, "a lane is started only with room");
                self.spawn_lane()
            }
        };
        let handoff = self.lanes[lane].as_ref().expect("a live lane");
        let left = handoff.job.lock().expect("never poisoned").replace(job);
        debug_assert!(left.is_none(), "an idle lane holds no job");
        // Stored when the lane is not waiting yet: it finds the job when it comes back.
        handoff.ready.notify_one();
    }

    /// Ends the lanes that ran no probe for [`LANE_IDLE_TICKS`] whole ticks; `generation`
    /// is the tick starting now. Only idle lanes end, so no job is ever left behind.
    pub(super) fn retire_idle(&mut self, generation: u64) {
        self.generation = generation;
        while let Some(oldest) = self.idle.front()
            && oldest.since + LANE_IDLE_TICKS < generation
        {
            let lane = oldest.lane;
            self.idle.pop_front();
            let handoff = self.lanes[lane].take().expect("a live lane");
            handoff.retired.store(true, Ordering::Release);
            handoff.ready.notify_one();
            self.free_numbers.push(lane);
            self.live -= 1;
        }
        // Reap the lanes that ended, so their tasks are not kept. A lane catches its
        // probe's panics; one that ended any other way is a bug, said loudly.
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(error) = ended {
                tracing::error!(error = %error, "a probe lane ended abnormally: an internal fault in the worker");
            }
        }
    }

    fn spawn_lane(&mut self) -> usize {
        let handoff = Arc::new(Handoff::default());
        let lane = match self.free_numbers.pop() {
            Some(lane) => {
                self.lanes[lane] = Some(handoff.clone());
                lane
            }
            None => {
                self.lanes.push(Some(handoff.clone()));
                self.lanes.len() - 1
            }
        };
        self.live += 1;
        let (prober, finished) = (self.prober.clone(), self.finished_tx.clone());
        self.tasks.spawn(async move {
            loop {
                handoff.ready.notified().await;
                let job = handoff.job.lock().expect("never poisoned").take();
                let Some(job) = job else {
                    if handoff.retired.load(Ordering::Acquire) {
                        break;
                    }
                    continue;
                };
                let Job {
                    record,
                    spec,
                    permit,
                    span,
                } = job;
                let probe = async {
                    #[cfg(test)]
                    if record.engine_endpoint == tests::PANICKING_ENDPOINT {
                        panic!("a panic injected by a test");
                    }
                    prober.probe(&record.engine_endpoint, &spec).await
                };
                // Without a span the probe runs bare: `Instrumented` enters and leaves even
                // an empty span on every poll.
                let outcome = match span {
                    Some(span) => {
                        AssertUnwindSafe(probe.instrument(span))
                            .catch_unwind()
                            .await
                    }
                    None => AssertUnwindSafe(probe).catch_unwind().await,
                }
                .map_err(|panic| panic_message(panic.as_ref()));
                drop(permit);
                let done = Finished {
                    lane,
                    record,
                    outcome,
                };
                if finished.send(done).is_err() {
                    tracing::debug!(lane, "probe lane ended: the worker is gone");
                    return;
                }
            }
            tracing::debug!(lane, "probe lane ended: idle for {LANE_IDLE_TICKS} ticks");
        });
        lane
    }

    /// A probe that already ended, if any.
    pub(super) fn try_next(&mut self) -> Option<Finished> {
        let done = self.finished.try_recv().ok()?;
        self.freed(done.lane);
        Some(done)
    }

    /// The next probe to end; `None` at once when none is running. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Finished> {
        if self.busy() == 0 {
            return None;
        }
        let done = self
            .finished
            .recv()
            .await
            .expect("the lanes' sender is held here");
        self.freed(done.lane);
        Some(done)
    }

    fn freed(&mut self, lane: usize) {
        self.idle.push_back(IdleLane {
            lane,
            since: self.generation,
        });
    }
}

/// A panic's message, bounded (it may quote an engine's answer).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    crate::bounded(message, 500)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::probe::read_request_head;

    /// A job's endpoint that makes its lane's probe panic (tests only).
    pub(super) const PANICKING_ENDPOINT: &str = "test:panic";

    const WAIT_LIMIT: Duration = Duration::from_secs(10);

    /// An engine that answers each request `200 ok` once `gate` is opened (`notify_waiters`
    /// after every request has arrived), and counts the requests it has read.
    async fn gated_engine(gate: Arc<Notify>, requests: Arc<Semaphore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (gate, requests) = (gate.clone(), requests.clone());
                tokio::spawn(async move {
                    while read_request_head(&mut socket).await {
                        let opened = gate.notified();
                        requests.add_permits(1);
                        opened.await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    /// A gated engine, a Prober, `max` probe slots and `max` lanes over them.
    struct Fixture {
        gate: Arc<Notify>,
        requests: Arc<Semaphore>,
        engine: String,
        prober: Prober,
        slots: Arc<Semaphore>,
        lanes: Lanes,
    }

    impl Fixture {
        async fn new(max: usize) -> Self {
            let (gate, requests) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
            let engine = gated_engine(gate.clone(), requests.clone()).await;
            let prober = Prober::new(Duration::from_secs(5), Duration::from_secs(60)).unwrap();
            Self {
                gate,
                requests,
                engine,
                slots: Arc::new(Semaphore::new(max)),
                lanes: Lanes::new(prober.clone(), max),
                prober,
            }
        }

        /// Starts a probe of game `game` at `endpoint` (the gated engine when `None`).
        fn start(&mut self, game: usize, endpoint: Option<&str>) {
            let job = Job {
                record: RuntimeRecord {
                    game_id: format!("game-{game}"),
                    container_id: None,
                    engine_endpoint: endpoint.unwrap_or(&self.engine).to_owned(),
                },
                spec: Arc::new(self.prober.default_spec().clone()),
                permit: self.slots.clone().try_acquire_owned().expect("a free slot"),
                span: None,
            };
            self.lanes.start(job);
        }

        /// Waits until `count` more requests have reached the gated engine.
        async fn arrived(&self, count: u32, what: &str) {
            tokio::time::timeout(WAIT_LIMIT, self.requests.acquire_many(count))
                .await
                .unwrap_or_else(|_| panic!("{what} within {WAIT_LIMIT:?}"))
                .expect("the semaphore is never closed")
                .forget();
        }

        /// Lets the engine answer every request it holds.
        fn open(&self) {
            self.gate.notify_waiters();
        }

        async fn next(&mut self) -> Finished {
            tokio::time::timeout(WAIT_LIMIT, self.lanes.next())
                .await
                .unwrap_or_else(|_| panic!("no probe ended within {WAIT_LIMIT:?}"))
                .expect("a probe is running")
        }
    }

    /// At most `max` lanes, each used again once its probe came back; a probe that outlives
    /// the caller's wait stays busy and comes back later, as a probe in flight across ticks.
    #[tokio::test]
    async fn at_most_max_lanes_run_and_an_idle_one_is_reused() {
        let mut fixture = Fixture::new(3).await;
        assert!(fixture.lanes.next().await.is_none(), "nothing runs yet");
        for round in 0..3 {
            for game in 0..3 {
                assert!(
                    fixture.lanes.has_room(),
                    "round {round}: room for probe {game}"
                );
                fixture.start(game, None);
            }
            assert!(
                !fixture.lanes.has_room(),
                "round {round}: every lane is busy"
            );
            assert_eq!(fixture.lanes.busy(), 3);
            // Every request reached the engine, which holds the answers.
            fixture.arrived(3, "three requests reach the engine").await;
            assert!(fixture.lanes.try_next().is_none(), "no answer yet");
            fixture.open();
            let mut games = Vec::new();
            for _ in 0..3 {
                let done = fixture.next().await;
                assert!(
                    done.outcome.as_ref().unwrap().is_healthy(),
                    "{:?}",
                    done.outcome
                );
                games.push(done.record.game_id);
            }
            games.sort();
            assert_eq!(games, ["game-0", "game-1", "game-2"], "round {round}");
            assert_eq!(fixture.lanes.busy(), 0);
            assert_eq!(
                fixture.slots.available_permits(),
                3,
                "each probe gave its slot back"
            );
            assert_eq!(fixture.lanes.live, 3, "round {round}: the same three lanes");
        }
    }

    /// A probe that panics comes back as its message, and its lane goes on probing.
    #[tokio::test]
    async fn a_panicking_probe_comes_back_as_its_message_and_the_lane_lives_on() {
        let mut fixture = Fixture::new(1).await;
        fixture.start(0, Some(PANICKING_ENDPOINT));
        let done = fixture.next().await;
        assert_eq!(done.record.game_id, "game-0");
        let panic = done.outcome.expect_err("the probe panicked");
        assert!(panic.contains("a panic injected by a test"), "{panic}");
        assert_eq!(fixture.slots.available_permits(), 1, "the slot came back");

        fixture.start(1, None);
        fixture.arrived(1, "the lane probes again").await;
        fixture.open();
        assert!(fixture.next().await.outcome.unwrap().is_healthy());
        assert_eq!(fixture.lanes.live, 1, "the same lane");
    }

    /// Lanes that ran no probe for [`LANE_IDLE_TICKS`] whole ticks end, their tasks with
    /// them; a lane in use never does, and a later probe starts a new lane.
    #[tokio::test]
    async fn lanes_idle_for_two_ticks_end_and_busy_ones_do_not() {
        let mut fixture = Fixture::new(4).await;
        // Tick 1: four probes, all back.
        fixture.lanes.retire_idle(1);
        for game in 0..4 {
            fixture.start(game, None);
        }
        fixture.arrived(4, "four requests reach the engine").await;
        fixture.open();
        for _ in 0..4 {
            fixture.next().await;
        }
        // Ticks 2 and 3: one probe each, on the lane freed last; at tick 3 that lane is
        // still busy (its engine holds the answer) while the others have been idle since
        // tick 1.
        for generation in 2..=3 {
            fixture.lanes.retire_idle(generation);
            fixture.start(10, None);
            fixture.arrived(1, "the request reaches the engine").await;
            if generation == 2 {
                fixture.open();
                fixture.next().await;
            }
        }
        assert_eq!(
            fixture.lanes.live, 4,
            "idle since tick 1: kept through tick 3"
        );
        fixture.lanes.retire_idle(4);
        assert_eq!(
            fixture.lanes.live, 1,
            "the three idle since tick 1 ended at tick 4"
        );
        assert_eq!(fixture.lanes.busy(), 1, "the busy lane is kept");
        let tasks = &mut fixture.lanes.tasks;
        tokio::time::timeout(WAIT_LIMIT, async {
            while tasks.len() > 1 {
                tasks.join_next().await;
            }
        })
        .await
        .expect("the ended lanes' tasks finish");
        // The busy lane's probe comes back, and new probes start new lanes beside it.
        fixture.open();
        assert!(fixture.next().await.outcome.unwrap().is_healthy());
        for game in 0..4 {
            fixture.start(game, None);
        }
        assert_eq!(fixture.lanes.live, 4);
        fixture
            .arrived(4, "four requests reach the engine again")
            .await;
        fixture.open();
        for _ in 0..4 {
            assert!(fixture.next().await.outcome.unwrap().is_healthy());
        }
    }
}
