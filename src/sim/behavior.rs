//! What each simulated engine does: a [`Behavior`] chosen by weight ([`Mix`]) and, for
//! `flapping` and `scheduled` engines, a cycle of [`Phase`]s ([`Schedule`]), with the
//! parsers behind `healthprobe fleet --mix` and `--schedule`. Nothing here is random.

use std::str::FromStr;
use std::time::Duration;

/// What an engine does at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `200 ok`.
    Healthy,
    /// The fleet's failing status (default 503).
    Failing,
    /// `200` after the fleet's slow delay: a timeout when the delay exceeds the probe
    /// timeout.
    Slow,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Slow => "slow",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "healthy" => Ok(Self::Healthy),
            "failing" => Ok(Self::Failing),
            "slow" => Ok(Self::Slow),
            other => Err(format!(
                "unknown phase {other:?} (healthy, failing or slow)"
            )),
        }
    }
}

/// An engine's character for the life of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behavior {
    Healthy,
    Failing,
    Slow,
    /// Healthy for one flap period, failing for the next, and so on; each engine starts at
    /// its own offset so they do not all flip at once.
    Flapping,
    /// Follows the fleet's schedule (a cycle of phases), all in step.
    Scheduled,
}

impl Behavior {
    pub const ALL: [Behavior; 5] = [
        Self::Healthy,
        Self::Failing,
        Self::Slow,
        Self::Flapping,
        Self::Scheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Slow => "slow",
            Self::Flapping => "flapping",
            Self::Scheduled => "scheduled",
        }
    }
}

impl FromStr for Behavior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown behavior {s:?} (healthy, failing, slow, flapping, scheduled)")
            })
    }
}

/// Weights per behavior, e.g. `healthy=6,flapping=2,failing=1,slow=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(Behavior, f64)>);

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} must be behavior=weight"))?;
            let behavior: Behavior = name.parse()?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a number, got {weight:?}"))?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(format!("weight of {name} must be zero or more"));
            }
            if weights.iter().any(|(b, _)| *b == behavior) {
                return Err(format!("{name} appears twice in the mix"));
            }
            weights.push((behavior, weight));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Self(weights))
    }
}

impl Mix {
    /// Behaviors for `n` engines: counts by largest remainder (so `1:1:1` over 10 gives
    /// 4,3,3, never 3,3,3), spread with smooth weighted round robin so failing engines are
    /// interleaved with healthy ones rather than bunched at the end.
    pub(crate) fn assign(&self, n: usize) -> Vec<Behavior> {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let exact: Vec<f64> = self.0.iter().map(|(_, w)| w / total * n as f64).collect();
        let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut order: Vec<usize> = (0..exact.len()).collect();
        order.sort_by(|&a, &b| {
            (exact[b] - exact[b].floor())
                .total_cmp(&(exact[a] - exact[a].floor()))
                .then(a.cmp(&b))
        });
        let short = n - counts.iter().sum::<usize>();
        for &i in order.iter().take(short) {
            counts[i] += 1;
        }
        let mut current = vec![0i64; counts.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            for (c, &count) in current.iter_mut().zip(&counts) {
                *c += count as i64;
            }
            let pick = (0..counts.len())
                .max_by(|&a, &b| current[a].cmp(&current[b]).then(b.cmp(&a)))
                .expect("a non-empty mix");
            current[pick] -= n as i64;
            out.push(self.0[pick].0);
        }
        out
    }
}

/// A cycle of phases, e.g. `healthy:20s,failing:15s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule(pub Vec<(Phase, Duration)>);

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (phase, duration) = part
                .split_once(':')
                .ok_or_else(|| format!("schedule step {part:?} must be phase:duration"))?;
            let duration = humantime::parse_duration(duration.trim())
                .map_err(|e| format!("schedule step {part:?}: {e}"))?;
            if duration.is_zero() {
                return Err(format!("schedule step {part:?} must last more than zero"));
            }
            steps.push((phase.parse()?, duration));
        }
        if steps.is_empty() {
            return Err("the schedule needs at least one step".into());
        }
        Ok(Self(steps))
    }
}

impl Schedule {
    /// The phase `elapsed` into the (repeating) cycle.
    pub(crate) fn phase_at(&self, elapsed: Duration) -> Phase {
        let cycle: Duration = self.0.iter().map(|(_, d)| *d).sum();
        let mut at = Duration::from_nanos((elapsed.as_nanos() % cycle.as_nanos()) as u64);
        for (phase, duration) in &self.0 {
            if at < *duration {
                return *phase;
            }
            at -= *duration;
        }
        self.0.last().expect("non-empty schedule").0
    }
}
