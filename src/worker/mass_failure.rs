//! The worker's side of the mass-failure hold (DESIGN §15; the rule itself is [`super::hold`],
//! pure): `probe_failed` decided during a tick waits for the tick's end, the tick is judged
//! and the waiting failures are recorded, held or dropped; the hold's figures go to the
//! status surface and to the other replicas. A replica that stepped out runs
//! [`Worker::sample_tick`] instead of ticks until its own probes succeed again.

use std::time::Instant;

use futures::StreamExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::games::GameTable;
use super::hold::{Action, HoldState, MassFailure, TickShare};
use super::membership::{Membership, ReplicaHealth};
use super::overrides::GameSettings;
use super::report::{TickError, TickReport};
use crate::status::HoldSummary;

/// Games a degraded replica probes per tick to learn that its own probes succeed again.
const DEGRADED_SAMPLE: usize = 20;

impl Worker {
    /// Records the `probe_failed` that waited for the tick's end: held if the hold is on
    /// (or the checker's fault just cleared), dropped if this replica steps out, as they
    /// were otherwise. Then forgives what the checker's fault made, if it cleared.
    pub(super) async fn settle_pending_failures(
        &mut self,
        action: Action,
        report: &mut TickReport,
    ) {
        let pending = std::mem::take(&mut self.pending_failed);
        if action == Action::StepOut {
            // Everything goes: the others start from the rows.
            self.games = GameTable::new();
            return;
        }
        let hold = action == Action::Dropped
            || self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        let mut batch = Vec::new();
        for (record, decision, outcome) in pending {
            if !self
                .games
                .expects(&record.game_id, record.container_id.as_deref())
            {
                report.dropped += 1;
                continue;
            }
            let decision = if hold {
                report.held += 1;
                self.metrics.mass_failure_held();
                decision.held()
            } else {
                decision
            };
            self.recorder
                .record(
                    &mut self.games,
                    &record,
                    decision,
                    &outcome,
                    report,
                    &mut batch,
                )
                .await;
        }
        self.recorder
            .flush(&mut self.games, &mut batch, report)
            .await;
        if action == Action::Dropped {
            let forgiven = self.games.forgive_unpublished_failures();
            tracing::warn!(
                forgiven,
                "the checker's own fault cleared: failures seen during the hold are dropped, engines judged afresh"
            );
        }
    }

    /// Folds a complete tick into the mass-failure hold (DESIGN §15): logs, metric, figures
    /// for the other replicas. The caller acts on the returned action.
    pub(super) fn judge_mass_failure(
        &mut self,
        report: &TickReport,
        generation: u64,
        membership: &Membership,
    ) -> Action {
        // The failures waiting for this judgement count too: a game's first failure of a
        // storm is pending, not yet in its counters.
        let pending_new = self
            .pending_failed
            .iter()
            .filter(|(record, _, _)| {
                self.games
                    .get(&record.game_id)
                    .is_some_and(|g| g.health.consecutive_failures == 0)
            })
            .count();
        let share = TickShare {
            owned: report.owned,
            failing: self.games.failing_seen_in(generation) + pending_new,
            local_errors: report.local_errors,
        };
        let Some(mass) = self.mass_failure.as_mut() else {
            self.publish_health(share.owned, share.not_ok());
            return Action::Nothing;
        };
        let peers = membership.peers(&mass.settings);
        let hold = mass.settings.hold;
        let action = mass.observe(share, peers, Instant::now());
        match action {
            Action::Nothing => {}
            Action::Started => tracing::warn!(
                owned = share.owned,
                failing = share.failing,
                local_errors = share.local_errors,
                ?hold,
                "mass failure: most engines failed at once, more likely the checker than the fleet; probe_failed held"
            ),
            Action::Released => tracing::warn!(
                owned = share.owned,
                failing = share.failing,
                ?hold,
                "mass failure lasted the hold with no local fault and no replica seeing otherwise: the failures are real; probe_failed published again"
            ),
            Action::Dropped => {}
            Action::Cleared => tracing::info!(
                failing = share.failing,
                "mass failure over: probe_failed no longer held"
            ),
            Action::StepOut => {
                tracing::error!(
                    owned = share.owned,
                    failing = share.failing,
                    local_errors = share.local_errors,
                    "this replica's probes fail where the other replicas' do not: stepping out of the membership until they succeed again; its games go to the others, nothing is recorded meanwhile"
                );
                self.degraded = true;
            }
        }
        let holding = self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        self.metrics.mass_failure_holding(holding);
        self.publish_health(share.owned, share.not_ok());
        action
    }

    fn publish_health(&self, owned: usize, failing: usize) {
        let holding = self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        self.hold_flags.set(holding, self.degraded);
        if let Some(health) = &self.replica_health {
            let clamp = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            health.send_replace(ReplicaHealth {
                owned_games: Some(clamp(owned)),
                failing_games: Some(clamp(failing)),
                degraded: self.degraded,
            });
        }
    }

    /// The hold as the status surface shows it.
    pub(super) fn hold_report(&self) -> HoldSummary {
        if self.degraded {
            return HoldSummary::Degraded;
        }
        match self.mass_failure.as_ref().map(MassFailure::state) {
            None | Some(HoldState::Clear) => HoldSummary::Clear,
            Some(HoldState::Holding { since, local_fault }) => HoldSummary::Holding {
                for_: since.elapsed(),
                local_fault,
            },
            Some(HoldState::Released { since }) => HoldSummary::Released {
                for_: since.elapsed(),
            },
        }
    }

    /// A degraded replica's tick: probe a sample of the games it would own, record nothing,
    /// and come back when most of the sample succeeds.
    pub(super) async fn sample_tick(
        &mut self,
        membership: &Membership,
        stop: &CancellationToken,
        started: Instant,
    ) -> Result<TickReport, TickError> {
        let mut report = TickReport::default();
        let mut sample = Vec::new();
        {
            let mut listed = self.store.running_games();
            while let Some(game) = listed.next().await {
                let game = game.map_err(|source| TickError::List {
                    listed: report.records,
                    source,
                })?;
                report.records += 1;
                if sample.len() < DEGRADED_SAMPLE && membership.owns(&game.record.game_id) {
                    // A disabled game or one still starting says nothing about this
                    // replica's own probes.
                    let settings =
                        GameSettings::resolve(game.overrides.as_ref(), &self.probe_settings);
                    if settings.skip(game.since_start).is_none() {
                        sample.push((game.record, settings.spec));
                    }
                }
            }
        }
        let mut probes = JoinSet::new();
        for (record, spec) in sample {
            let prober = self.prober.clone();
            let slots = self.slots.clone();
            probes.spawn(async move {
                let _permit = slots.acquire_owned().await;
                prober.probe(&record.engine_endpoint, &spec).await
            });
        }
        let (mut ok, mut not_ok) = (0usize, 0usize);
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => { report.interrupted = true; break }
                outcome = probes.join_next() => outcome,
            };
            match outcome {
                None => break,
                Some(Ok(outcome)) if outcome.is_healthy() => ok += 1,
                Some(_) => not_ok += 1,
            }
        }
        report.sampled = ok + not_ok;
        report.sample_failing = not_ok;
        let back = self
            .mass_failure
            .as_ref()
            .is_none_or(|m| m.settings.share_is_fine(not_ok, ok + not_ok));
        if back && !report.interrupted {
            tracing::info!(
                sampled = ok + not_ok,
                failing = not_ok,
                "this replica's probes succeed again: rejoining the membership"
            );
            self.degraded = false;
            if let Some(mass) = self.mass_failure.as_mut() {
                mass.reset();
            }
        }
        self.metrics.mass_failure_holding(false);
        self.publish_health(ok + not_ok, not_ok);
        report.hold = self.hold_report();
        report.duration = started.elapsed();
        Ok(report)
    }
}
