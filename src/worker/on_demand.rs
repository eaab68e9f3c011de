//! On-demand probes (`POST /games/{id}/probe`) beside the ticks (DESIGN §15).
//!
//! An on-demand probe never waits for a tick and never makes one wait: it reads the game's
//! row, probes, and records through the same commit rule as a tick (DESIGN §12), as a second
//! writer would. Its write is conditional on the row's version, so if a tick wrote first the
//! probe's decision is refused (a conflict: nothing emitted) and the tick's next sync reloads
//! whatever the probe wrote. Nothing is shared with the tick's memory but Postgres.
//!
//! Concurrent requests for one game share one probe in flight (single-flight); beyond
//! [`MAX_IN_FLIGHT`] games in flight a request is refused at once ([`OnDemandError::Busy`])
//! instead of queueing, so a flood costs neither the ticks nor the worker's descriptors more
//! than that many probes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use thiserror::Error;
use tokio::sync::{Notify, watch};

use super::games::GameTable;
use super::overrides::{GameSettings, GlobalProbeSettings};
use super::record::Recorder;
use super::report::{ProbeOneError, ProbeOneReport, TickReport};
use crate::hysteresis::Thresholds;
use crate::probe::Prober;
use crate::probe::spec::ProbeSpec;
use crate::store::{ListedGame, Store};
use crate::telemetry::Metrics;

/// Games probed on demand at once, at most. A few operators or a runtime manager asking
/// about one game each need a handful; a flood beyond this is refused, not queued. Each
/// holds one connection, well inside the descriptor budget's reserve.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// Commits tried per on-demand probe: a conflict means a tick wrote the game meanwhile,
/// and the probe is decided again from the new row.
const COMMIT_ATTEMPTS: usize = 3;

/// What a request waits on: the one probe in flight for its game.
type InFlight = Shared<BoxFuture<'static, Result<Arc<ProbeOneReport>, Arc<ProbeOneError>>>>;

/// Why an on-demand probe was not run or not recorded.
#[derive(Debug, Error, Clone)]
pub enum OnDemandError {
    /// Too many games are being probed on demand: retry later (HTTP 429, `Retry-After`).
    #[error("{0} on-demand probes are in flight already; retry later")]
    Busy(usize),
    /// This replica stepped out of the membership (its own probes fail): ask another.
    #[error(
        "this replica's own probes fail (it stepped out of the membership); ask another replica"
    )]
    Degraded,
    #[error(transparent)]
    Probe(Arc<ProbeOneError>),
}

/// The mass-failure hold as the run loop last settled it (DESIGN §15), on a `watch` the
/// run loop writes and on-demand probes read.
#[derive(Debug)]
pub struct HoldFlags(watch::Sender<HoldState>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HoldState {
    holding: bool,
    degraded: bool,
}

impl Default for HoldFlags {
    fn default() -> Self {
        Self(watch::Sender::new(HoldState::default()))
    }
}

impl HoldFlags {
    pub fn set(&self, holding: bool, degraded: bool) {
        crate::periodic::publish(&self.0, HoldState { holding, degraded });
    }

    pub fn holding(&self) -> bool {
        self.0.borrow().holding
    }

    pub fn degraded(&self) -> bool {
        self.0.borrow().degraded
    }
}

/// The on-demand prober. Cheap to clone.
#[derive(Clone)]
pub struct OnDemand {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    prober: Prober,
    /// The thresholds, and what per-game overrides replace (DESIGN §16).
    probe_settings: GlobalProbeSettings,
    recorder: Recorder,
    metrics: Metrics,
    flags: Arc<HoldFlags>,
    in_flight: Mutex<HashMap<String, InFlight>>,
}

impl OnDemand {
    pub fn new(
        store: Store,
        prober: Prober,
        thresholds: Thresholds,
        metrics: Metrics,
        outbox_wake: Arc<Notify>,
        flags: Arc<HoldFlags>,
    ) -> Self {
        let probe_settings = GlobalProbeSettings {
            spec: Arc::new(prober.default_spec().clone()),
            ..GlobalProbeSettings::new(thresholds)
        };
        Self {
            inner: Arc::new(Inner {
                recorder: Recorder::new(store.clone(), metrics.clone(), outbox_wake),
                store,
                prober,
                probe_settings,
                metrics,
                flags,
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The global initial delay and probe spec that per-game overrides replace (as
    /// [`super::Worker::with_probe_settings`]); called before the prober is shared.
    pub fn with_probe_settings(mut self, initial_delay: Duration, spec: ProbeSpec) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set before the prober is shared");
        inner.probe_settings.initial_delay = initial_delay;
        inner.probe_settings.spec = Arc::new(spec);
        self
    }

    /// What `Retry-After` says to a refused request: one probe timeout, at least a second.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.inner
            .probe_settings
            .spec
            .timeout
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    }

    /// Games being probed on demand now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.lock().expect("never poisoned").len()
    }

    /// Probes the game now (or joins the probe of it already in flight) and records the
    /// outcome. The probe runs in a task of its own: a caller that goes away does not cut
    /// it short, and the others waiting on it get its answer.
    pub async fn probe(&self, game_id: &str) -> Result<Arc<ProbeOneReport>, OnDemandError> {
        if self.inner.flags.degraded() {
            return Err(OnDemandError::Degraded);
        }
        let shared = {
            let mut in_flight = self.inner.in_flight.lock().expect("never poisoned");
            match in_flight.get(game_id) {
                Some(shared) => shared.clone(),
                None => {
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        return Err(OnDemandError::Busy(in_flight.len()));
                    }
                    let inner = self.inner.clone();
                    let id = game_id.to_owned();
                    let task = tokio::spawn(async move {
                        let result = inner.probe_and_record(&id).await;
                        inner.in_flight.lock().expect("never poisoned").remove(&id);
                        result.map(Arc::new).map_err(Arc::new)
                    });
                    let shared = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(ProbeOneError::NotRecorded(format!(
                                "the probe task ended abnormally: {e}"
                            ))))
                        })
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(game_id.to_owned(), shared.clone());
                    shared
                }
            }
        };
        shared.await.map_err(OnDemandError::Probe)
    }
}

impl Inner {
    async fn probe_and_record(&self, game_id: &str) -> Result<ProbeOneReport, ProbeOneError> {
        let listed = self.running(game_id).await?;
        // The game's override applies as in a tick (a bad row: the global settings).
        let settings = GameSettings::resolve(listed.overrides.as_ref(), &self.probe_settings);
        if let Some(skip) = settings.skip(listed.since_start) {
            return Err(ProbeOneError::skipped(game_id, skip));
        }
        let ListedGame { record, .. } = listed;
        let outcome = self
            .prober
            .probe(&record.engine_endpoint, &settings.spec)
            .await;
        self.metrics
            .probe_completed(outcome.outcome_label(), outcome.status, outcome.latency);
        if outcome.is_local_fault() {
            return Err(ProbeOneError::NotRecorded(format!(
                "the worker could not attempt the probe (its own fault, not the engine's): {}",
                outcome
                    .failure
                    .as_ref()
                    .map(|f| f.message.as_str())
                    .unwrap_or_default()
            )));
        }
        // The observation is decided from the row as Postgres holds it at commit time: a
        // tick that wrote meanwhile makes the conditional write a conflict, and the probe is
        // decided again from the new row (DESIGN §12), a few times at most.
        let mut last_errors = Vec::new();
        for _ in 0..COMMIT_ATTEMPTS {
            let ListedGame { record, stored, .. } = self.running(game_id).await?;
            let mut games = GameTable::new();
            games.sync(
                &record.game_id,
                record.container_id.as_deref(),
                stored.as_ref(),
                1,
            );
            let mut decision = games.decide(&record.game_id, &outcome, settings.thresholds, true);
            if decision.publishes_failure() && self.flags.holding() {
                decision = decision.held();
                self.metrics.mass_failure_held();
            }
            let mut report = TickReport::default();
            let mut batch = Vec::new();
            self.recorder
                .record(
                    &mut games,
                    &record,
                    decision,
                    &outcome,
                    &mut report,
                    &mut batch,
                )
                .await;
            self.recorder
                .flush(&mut games, &mut batch, &mut report)
                .await;
            if report.is_clean() && report.conflicts == 0 {
                return Ok(ProbeOneReport {
                    health: games
                        .get(&record.game_id)
                        .map(|g| g.health)
                        .unwrap_or_default(),
                    record,
                    outcome,
                    event: report.events.pop(),
                });
            }
            last_errors = report.store_errors;
            if report.failed_commits > 0 {
                last_errors.push("the event could not be committed".into());
                break;
            }
            if !last_errors.is_empty() {
                break;
            }
        }
        if last_errors.is_empty() {
            last_errors.push("other writers kept changing the game first; probe again".into());
        }
        Err(ProbeOneError::NotRecorded(last_errors.join("; ")))
    }

    async fn running(&self, game_id: &str) -> Result<ListedGame, ProbeOneError> {
        self.store
            .running_game(game_id)
            .await
            .map_err(ProbeOneError::Lookup)?
            .ok_or_else(|| ProbeOneError::NotRunning(game_id.to_owned()))
    }
}
