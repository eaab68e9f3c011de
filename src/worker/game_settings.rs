//! The settings each game is probed and decided with (DESIGN §16): its
//! `health_probe_overrides` row over the global settings ([`super::overrides`], pure),
//! resolved as the tick lists the game and kept while the game is tracked, so a probe that
//! ends in a later tick is still decided with its game's settings. A bad row is logged once
//! per reason and counted in the tick's report.

use std::sync::Arc;

use super::Worker;
use super::overrides::GameSettings;
use super::report::{MAX_REPORTED_OVERRIDES, TickReport};
use crate::hysteresis::Thresholds;
use crate::probe::spec::ProbeSpec;
use crate::store::ListedGame;

impl Worker {
    /// The game's settings from its override row over the global ones; a bad row is
    /// logged (once per reason) and counted in `report`.
    pub(super) fn game_settings(
        &mut self,
        game: &ListedGame,
        report: &mut TickReport,
    ) -> GameSettings {
        let settings = GameSettings::resolve(game.overrides.as_ref(), &self.probe_settings);
        let game_id = &game.record.game_id;
        match &settings.problem {
            Some(problem) => {
                report.bad_override_count += 1;
                if report.bad_overrides.len() < MAX_REPORTED_OVERRIDES {
                    report
                        .bad_overrides
                        .push((game_id.clone(), crate::bounded(problem, 200)));
                }
                if self.logged_bad_overrides.get(game_id) != Some(problem) {
                    tracing::warn!(game_id = %crate::bounded(game_id, 200), problem = %crate::bounded(problem, 200), "bad row in health_probe_overrides: the game is probed with the global settings");
                    self.logged_bad_overrides
                        .insert(game_id.clone(), problem.clone());
                }
            }
            None => {
                if self.logged_bad_overrides.remove(game_id).is_some() {
                    tracing::info!(game_id = %crate::bounded(game_id, 200), "row in health_probe_overrides fixed: its settings apply");
                }
            }
        }
        if settings.is_global(&self.probe_settings) {
            self.game_settings.remove(game_id);
        } else {
            self.game_settings.insert(game_id.clone(), settings.clone());
        }
        settings
    }

    /// The thresholds a game is decided with: its override's, or the worker's.
    pub(super) fn thresholds_of(&self, game_id: &str) -> Thresholds {
        self.game_settings
            .get(game_id)
            .map_or(self.settings.thresholds, |s| s.thresholds)
    }

    /// What a game is probed with: its override's spec, or the global one.
    pub(super) fn spec_of(&self, game_id: &str) -> Arc<ProbeSpec> {
        self.game_settings
            .get(game_id)
            .map_or_else(|| self.probe_settings.spec.clone(), |s| s.spec.clone())
    }
}
