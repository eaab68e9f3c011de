//! Per-game probe settings (DESIGN §16): a row of `health_probe_overrides` read with the
//! running list, over the global settings. Pure: no I/O.
//!
//! A bad row (a threshold below 1, a negative delay, a timeout that is not positive, a
//! status range or headers that do not parse) is that game's problem only: its values are
//! ignored, the game is probed with the global settings, and the reason is reported (the
//! tick's report, `/status`, the log). `disabled` is always honoured: it cannot be bad, and
//! not probing is what it asks for.

use std::sync::Arc;
use std::time::Duration;

use crate::hysteresis::Thresholds;
use crate::probe::spec::{ExpectedStatuses, ProbeHeaders, ProbeSpec, parse_path};
use crate::store::ProbeOverride;

/// Longest timeout or initial delay an override may set: beyond it the value is more
/// likely a unit mistake (milliseconds written as seconds) than a wish.
pub(crate) const MAX_OVERRIDE_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The global values an override replaces.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GlobalProbeSettings {
    pub thresholds: Thresholds,
    /// `RTMANAGER_PROBE_INITIAL_DELAY`.
    pub initial_delay: Duration,
    /// `RTMANAGER_PROBE_PATH`, `HEALTHPROBE_PROBE_EXPECT`, `HEALTHPROBE_PROBE_HEADERS`,
    /// `RTMANAGER_PROBE_TIMEOUT`; shared by every game without an override of them.
    pub spec: Arc<ProbeSpec>,
}

impl GlobalProbeSettings {
    /// The seed's probe with `thresholds`: no delay, `/healthz`, `200`, 2 s.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            initial_delay: Duration::ZERO,
            spec: Arc::new(ProbeSpec::default()),
        }
    }
}

/// What one game is probed with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GameSettings {
    pub disabled: bool,
    pub thresholds: Thresholds,
    pub initial_delay: Duration,
    /// The global spec (the same `Arc`) unless the row sets a path, statuses, headers or a
    /// timeout.
    pub spec: Arc<ProbeSpec>,
    /// Why the row was ignored, if it was.
    pub problem: Option<String>,
}

/// Why a listed game is not probed this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its override disables it.
    Disabled,
    /// Its record started less than the initial delay ago.
    InitialDelay,
}

impl GameSettings {
    /// The global settings, untouched.
    pub fn global(global: &GlobalProbeSettings) -> Self {
        Self {
            disabled: false,
            thresholds: global.thresholds,
            initial_delay: global.initial_delay,
            spec: global.spec.clone(),
            problem: None,
        }
    }

    /// The settings of a game with `row` (or none) over `global`.
    pub fn resolve(row: Option<&ProbeOverride>, global: &GlobalProbeSettings) -> Self {
        let Some(row) = row else {
            return Self::global(global);
        };
        match apply(row, global) {
            Ok(applied) => Self {
                disabled: row.disabled,
                ..applied
            },
            Err(problem) => Self {
                disabled: row.disabled,
                problem: Some(problem),
                ..Self::global(global)
            },
        }
    }

    /// Whether the settings differ from the global ones (what the worker must remember
    /// for the game).
    pub(crate) fn is_global(&self, global: &GlobalProbeSettings) -> bool {
        self.thresholds == global.thresholds && Arc::ptr_eq(&self.spec, &global.spec)
    }

    /// Whether the game is probed now, `since_start` after its record's `started_at`
    /// (`None`: the record has none, and is probed at once).
    pub fn skip(&self, since_start: Option<Duration>) -> Option<Skip> {
        if self.disabled {
            return Some(Skip::Disabled);
        }
        match since_start {
            Some(age) if age < self.initial_delay => Some(Skip::InitialDelay),
            _ => None,
        }
    }
}

fn seconds(name: &str, secs: f64, allow_zero: bool) -> Result<Duration, String> {
    let valid = secs.is_finite() && (secs > 0.0 || (allow_zero && secs == 0.0));
    if !valid {
        let wanted = if allow_zero {
            "zero or more"
        } else {
            "positive"
        };
        return Err(format!("{name} must be {wanted}, got {secs} s"));
    }
    let duration = Duration::from_secs_f64(secs);
    if duration > MAX_OVERRIDE_DURATION {
        return Err(format!(
            "{name} must be at most {}, got {secs} s",
            humantime::format_duration(MAX_OVERRIDE_DURATION)
        ));
    }
    Ok(duration)
}

fn apply(row: &ProbeOverride, global: &GlobalProbeSettings) -> Result<GameSettings, String> {
    let mut settings = GameSettings::global(global);
    if let Some(n) = row.failures_threshold {
        if n < 1 {
            return Err(format!("failures_threshold must be at least 1, got {n}"));
        }
        settings.thresholds.failures = n as u32;
    }
    if let Some(secs) = row.initial_delay_secs {
        settings.initial_delay = seconds("initial_delay", secs, true)?;
    }
    let sets_spec = row.path.is_some()
        || row.expect.is_some()
        || row.headers.is_some()
        || row.timeout_secs.is_some();
    if sets_spec {
        let mut spec = ProbeSpec::clone(&global.spec);
        if let Some(path) = &row.path {
            spec.path = parse_path(path).map_err(|e| format!("path: {e}"))?;
        }
        if let Some(expect) = &row.expect {
            spec.expect = ExpectedStatuses::parse(expect).map_err(|e| format!("expect: {e}"))?;
        }
        if let Some(headers) = &row.headers {
            spec.headers = ProbeHeaders::from_json(headers).map_err(|e| format!("headers: {e}"))?;
        }
        if let Some(secs) = row.timeout_secs {
            spec.timeout = seconds("timeout", secs, false)?;
        }
        settings.spec = Arc::new(spec);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> GlobalProbeSettings {
        GlobalProbeSettings::new(Thresholds {
            failures: 3,
            recovery: 1,
        })
    }

    #[test]
    fn no_row_is_the_global_settings() {
        let global = global();
        let settings = GameSettings::resolve(None, &global);
        assert_eq!(settings, GameSettings::global(&global));
        assert!(settings.is_global(&global));
        assert_eq!(settings.skip(None), None);
        assert_eq!(settings.skip(Some(Duration::ZERO)), None);
    }

    #[test]
    fn a_row_overrides_what_it_sets_and_nothing_else() {
        let row = ProbeOverride {
            path: Some("/ready".into()),
            failures_threshold: Some(5),
            initial_delay_secs: Some(30.0),
            timeout_secs: Some(0.5),
            ..ProbeOverride::default()
        };
        let settings = GameSettings::resolve(Some(&row), &global());
        assert_eq!(settings.thresholds.failures, 5);
        assert_eq!(settings.thresholds.recovery, 1);
        assert_eq!(settings.initial_delay, Duration::from_secs(30));
        assert_eq!(settings.spec.timeout, Duration::from_millis(500));
        assert_eq!(settings.spec.path, "/ready");
        assert_eq!(settings.spec.expect, ExpectedStatuses::default());
        assert_eq!(settings.problem, None);
        assert!(!settings.is_global(&global()));
        // The grace counts from the record's start; a record without one is probed now.
        assert_eq!(
            settings.skip(Some(Duration::from_secs(29))),
            Some(Skip::InitialDelay)
        );
        assert_eq!(settings.skip(Some(Duration::from_secs(30))), None);
        assert_eq!(settings.skip(None), None);
    }

    #[test]
    fn a_bad_row_is_ignored_and_says_why() {
        let cases = [
            (
                ProbeOverride {
                    failures_threshold: Some(0),
                    ..Default::default()
                },
                "failures_threshold",
            ),
            (
                ProbeOverride {
                    initial_delay_secs: Some(-5.0),
                    ..Default::default()
                },
                "initial_delay",
            ),
            (
                ProbeOverride {
                    timeout_secs: Some(0.0),
                    ..Default::default()
                },
                "timeout",
            ),
            (
                ProbeOverride {
                    timeout_secs: Some(1e9),
                    ..Default::default()
                },
                "timeout",
            ),
        ];
        for (row, field) in cases {
            let settings = GameSettings::resolve(Some(&row), &global());
            let problem = settings.problem.clone().expect("a problem");
            assert!(problem.contains(field), "{problem}");
            assert_eq!(
                GameSettings {
                    problem: None,
                    ..settings
                },
                GameSettings::global(&global())
            );
        }
        // The spec's own parsers decide about path, statuses and headers.
        let row = ProbeOverride {
            expect: Some("2xx".into()),
            failures_threshold: Some(7),
            ..Default::default()
        };
        let settings = GameSettings::resolve(Some(&row), &global());
        assert_eq!(
            settings.thresholds,
            global().thresholds,
            "the whole row is ignored"
        );
        assert!(settings.problem.unwrap().contains("expect"));
    }

    #[test]
    fn the_spec_fields_are_checked() {
        let good = ProbeOverride {
            path: Some("/ready?full=1".into()),
            expect: Some("200-299, 301".into()),
            headers: Some(serde_json::json!({"X-Token": "abc"})),
            ..Default::default()
        };
        assert_eq!(GameSettings::resolve(Some(&good), &global()).problem, None);
        for (bad, field) in [
            (
                ProbeOverride {
                    path: Some("ready".into()),
                    ..Default::default()
                },
                "path",
            ),
            (
                ProbeOverride {
                    expect: Some("2xx".into()),
                    ..Default::default()
                },
                "expect",
            ),
            (
                ProbeOverride {
                    expect: Some("299-200".into()),
                    ..Default::default()
                },
                "expect",
            ),
            (
                ProbeOverride {
                    headers: Some(serde_json::json!(["X-Token", "abc"])),
                    ..Default::default()
                },
                "headers",
            ),
            (
                ProbeOverride {
                    headers: Some(serde_json::json!({"X-Token": 5})),
                    ..Default::default()
                },
                "headers",
            ),
        ] {
            let problem = GameSettings::resolve(Some(&bad), &global())
                .problem
                .unwrap();
            assert!(problem.contains(field), "{problem}");
        }
    }

    #[test]
    fn disabled_is_honoured_even_in_a_bad_row() {
        let row = ProbeOverride {
            disabled: true,
            failures_threshold: Some(-1),
            ..Default::default()
        };
        let settings = GameSettings::resolve(Some(&row), &global());
        assert!(settings.problem.is_some());
        assert_eq!(settings.skip(None), Some(Skip::Disabled));
        let row = ProbeOverride {
            disabled: true,
            ..Default::default()
        };
        assert_eq!(
            GameSettings::resolve(Some(&row), &global()).skip(Some(Duration::from_secs(9))),
            Some(Skip::Disabled)
        );
    }
}
