//! A game's failure episodes and availability over a window (the fleet page's timeline),
//! derived from the event log alone: nothing is written per tick for it.
//!
//! An episode is the time the runtime manager was told a game was failing: from a
//! `probe_failed` to the `probe_recovered` that ends it. Two cases end one without a
//! `probe_recovered`: a later `probe_failed` (the game's container was replaced and the new
//! one failed too: that is a new episode), and a game whose record now names another
//! container than the episode's and is not failing (a replaced container starts clean and
//! emits nothing, so the episode ends when the new container started). Pure: events in, a
//! summary out.

use chrono::{DateTime, Utc};

/// One `probe_failed` or `probe_recovered` of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub failed: bool,
    pub at: DateTime<Utc>,
    pub container_id: String,
}

/// What is known of the game now, from its running record and snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    pub container_id: Option<String>,
    /// When the current container started (`runtime_records.started_at`).
    pub started_at: Option<DateTime<Utc>>,
    /// A `probe_failed` is published and not recovered (`health_snapshots.status`).
    pub failing: bool,
}

/// One episode, clipped to the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub start: DateTime<Utc>,
    /// `None` while it goes on.
    pub end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Episodes overlapping the window, oldest first, clipped to it.
    pub episodes: Vec<Episode>,
    /// When the episode going on now started (possibly before the window).
    pub failing_since: Option<DateTime<Utc>>,
    /// Share of the window not inside an episode, 0 to 1.
    pub availability: f64,
}

/// `transitions` in commit order: the game's events inside the window and the last one
/// before it (which says whether the window opens on an episode).
pub fn history(
    transitions: &[Transition],
    current: &Current,
    window_start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> History {
    // (actual start, end, container) of every episode, unclipped.
    type Unclipped<'a> = (DateTime<Utc>, Option<DateTime<Utc>>, &'a str);
    let mut episodes: Vec<Unclipped> = Vec::new();
    for transition in transitions {
        let open = episodes.last_mut().filter(|e| e.1.is_none());
        match (transition.failed, open) {
            (true, Some(open)) => {
                open.1 = Some(transition.at);
                episodes.push((transition.at, None, &transition.container_id));
            }
            (true, None) => episodes.push((transition.at, None, &transition.container_id)),
            (false, Some(open)) => open.1 = Some(transition.at),
            (false, None) => {}
        }
    }
    if let Some(open) = episodes.last_mut().filter(|e| e.1.is_none()) {
        let replaced = current.container_id.as_deref().unwrap_or("") != open.2;
        if !current.failing && replaced {
            let started = current.started_at.unwrap_or(open.0);
            open.1 = Some(started.clamp(open.0, now));
        }
    }
    let failing_since = episodes
        .last()
        .filter(|e| e.1.is_none() && current.failing)
        .map(|e| e.0);

    let window_ms = (now - window_start).num_milliseconds().max(1);
    let mut failing_ms = 0;
    let mut clipped = Vec::new();
    for (start, end, _) in episodes {
        let end_or_now = end.unwrap_or(now).min(now);
        if end_or_now <= window_start && end.is_some() {
            continue;
        }
        let start = start.max(window_start);
        failing_ms += (end_or_now - start).num_milliseconds().max(0);
        clipped.push(Episode {
            start,
            end: end.filter(|e| *e < now),
        });
    }
    History {
        episodes: clipped,
        failing_since,
        availability: (1.0 - failing_ms as f64 / window_ms as f64).clamp(0.0, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone as _};

    use super::*;

    fn t(hours: f64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
            + Duration::milliseconds((hours * 3_600_000.0) as i64)
    }

    fn failed(hours: f64, container: &str) -> Transition {
        Transition {
            failed: true,
            at: t(hours),
            container_id: container.into(),
        }
    }

    fn recovered(hours: f64, container: &str) -> Transition {
        Transition {
            failed: false,
            at: t(hours),
            container_id: container.into(),
        }
    }

    fn running(container: &str, failing: bool) -> Current {
        Current {
            container_id: Some(container.into()),
            started_at: Some(t(0.0)),
            failing,
        }
    }

    const START: f64 = 0.0;
    const NOW: f64 = 24.0;

    #[test]
    fn no_event_is_full_availability() {
        let h = history(&[], &running("c", false), t(START), t(NOW));
        assert_eq!(h.episodes, []);
        assert_eq!(h.availability, 1.0);
        assert_eq!(h.failing_since, None);
    }

    #[test]
    fn a_closed_episode_costs_its_length() {
        let h = history(
            &[failed(6.0, "c"), recovered(12.0, "c")],
            &running("c", false),
            t(START),
            t(NOW),
        );
        assert_eq!(
            h.episodes,
            [Episode {
                start: t(6.0),
                end: Some(t(12.0))
            }]
        );
        assert!((h.availability - 0.75).abs() < 1e-9, "{}", h.availability);
        assert_eq!(h.failing_since, None);
    }

    #[test]
    fn an_episode_open_before_the_window_is_clipped_and_says_since_when() {
        // The last event before the window is a probe_failed: the window opens failing.
        let h = history(&[failed(-30.0, "c")], &running("c", true), t(START), t(NOW));
        assert_eq!(
            h.episodes,
            [Episode {
                start: t(START),
                end: None
            }]
        );
        assert_eq!(h.availability, 0.0);
        assert_eq!(h.failing_since, Some(t(-30.0)));
    }

    #[test]
    fn an_episode_that_ended_before_the_window_is_not_shown() {
        let h = history(
            &[failed(-30.0, "c"), recovered(-20.0, "c")],
            &running("c", false),
            t(START),
            t(NOW),
        );
        assert_eq!(h.episodes, []);
        assert_eq!(h.availability, 1.0);
    }

    #[test]
    fn a_second_probe_failed_starts_a_new_episode() {
        // The container was replaced at 10 h and the new one failed too.
        let h = history(
            &[failed(6.0, "a"), failed(10.0, "b"), recovered(12.0, "b")],
            &running("b", false),
            t(START),
            t(NOW),
        );
        assert_eq!(h.episodes.len(), 2);
        assert_eq!(h.episodes[0].end, Some(t(10.0)));
        assert!((h.availability - 0.75).abs() < 1e-9);
    }

    #[test]
    fn a_replaced_container_that_is_healthy_ends_the_episode_when_it_started() {
        let current = Current {
            container_id: Some("new".into()),
            started_at: Some(t(9.0)),
            failing: false,
        };
        let h = history(&[failed(6.0, "old")], &current, t(START), t(NOW));
        assert_eq!(
            h.episodes,
            [Episode {
                start: t(6.0),
                end: Some(t(9.0))
            }]
        );
        assert_eq!(h.failing_since, None);
        assert!((h.availability - 21.0 / 24.0).abs() < 1e-9);
    }

    #[test]
    fn an_episode_going_on_now_counts_until_now() {
        let h = history(&[failed(18.0, "c")], &running("c", true), t(START), t(NOW));
        assert_eq!(h.failing_since, Some(t(18.0)));
        assert_eq!(h.episodes[0].end, None);
        assert!((h.availability - 0.75).abs() < 1e-9);
    }

    #[test]
    fn a_recovery_without_an_episode_is_ignored() {
        let h = history(
            &[recovered(3.0, "c")],
            &running("c", false),
            t(START),
            t(NOW),
        );
        assert_eq!(h.episodes, []);
        assert_eq!(h.availability, 1.0);
    }
}
