//! The health event and its wire envelope (DESIGN §5). Pure data, no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ProbeFailed,
    ProbeRecovered,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProbeFailed => "probe_failed",
            Self::ProbeRecovered => "probe_recovered",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "probe_failed" => Some(Self::ProbeFailed),
            "probe_recovered" => Some(Self::ProbeRecovered),
            _ => None,
        }
    }
}

/// `probe_failed` details. Closed: no other fields, on the way out and on the way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedDetails {
    pub consecutive_failures: u32,
    pub last_status: u16,
    pub last_error: String,
}

/// `probe_recovered` details. Closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveredDetails {
    pub prior_failure_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Details {
    Failed(FailedDetails),
    Recovered(RecoveredDetails),
}

impl Details {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Failed(_) => EventType::ProbeFailed,
            Self::Recovered(_) => EventType::ProbeRecovered,
        }
    }
}

/// One decision of the worker, as stored in `health_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// UUIDv7: unique, time-ordered, and the JetStream de-duplication key.
    pub event_id: Uuid,
    pub game_id: String,
    /// `""` when the record has none.
    pub container_id: String,
    pub occurred_at: DateTime<Utc>,
    pub details: Details,
}

impl HealthEvent {
    pub fn new(
        game_id: impl Into<String>,
        container_id: Option<&str>,
        occurred_at: DateTime<Utc>,
        details: Details,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            game_id: game_id.into(),
            container_id: container_id.unwrap_or_default().to_owned(),
            occurred_at,
            details,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.details.event_type()
    }

    /// `<prefix>.<event_type>`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}", self.event_type().as_str())
    }

    pub fn envelope(&self) -> Envelope {
        Envelope {
            event_id: self.event_id,
            game_id: self.game_id.clone(),
            container_id: self.container_id.clone(),
            event_type: self.event_type(),
            occurred_at_ms: self.occurred_at.timestamp_millis(),
            details: self.details.clone(),
        }
    }

    /// The message body: the envelope as UTF-8 JSON.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope()).expect("an envelope always serializes")
    }
}

/// The message body published on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub event_id: Uuid,
    pub game_id: String,
    pub container_id: String,
    pub event_type: EventType,
    pub occurred_at_ms: i64,
    pub details: Details,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn failed_envelope_matches_the_contract() {
        let event = HealthEvent::new(
            "game-42",
            Some("3f9a1c0d2b"),
            at(1_775_121_700_000),
            Details::Failed(FailedDetails {
                consecutive_failures: 3,
                last_status: 503,
                last_error: "unexpected status 503".into(),
            }),
        );
        let body: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "event_id": event.event_id.to_string(),
                "game_id": "game-42",
                "container_id": "3f9a1c0d2b",
                "event_type": "probe_failed",
                "occurred_at_ms": 1_775_121_700_000i64,
                "details": { "consecutive_failures": 3, "last_status": 503, "last_error": "unexpected status 503" }
            })
        );
        assert_eq!(
            event.subject("runtime.health"),
            "runtime.health.probe_failed"
        );
        assert_eq!(event.event_id.get_version_num(), 7);
    }

    #[test]
    fn recovered_envelope_and_missing_container() {
        let event = HealthEvent::new(
            "g",
            None,
            at(5),
            Details::Recovered(RecoveredDetails {
                prior_failure_count: 4,
            }),
        );
        let body: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(body["container_id"], "");
        assert_eq!(body["event_type"], "probe_recovered");
        assert_eq!(body["details"], json!({ "prior_failure_count": 4 }));
        let back: Envelope = serde_json::from_value(body).unwrap();
        assert_eq!(back, event.envelope());
    }

    #[test]
    fn details_are_closed() {
        let extra = json!({ "prior_failure_count": 4, "note": "x" });
        assert!(serde_json::from_value::<RecoveredDetails>(extra.clone()).is_err());
        assert!(serde_json::from_value::<Details>(extra).is_err());
        let extra = json!({ "consecutive_failures": 3, "last_status": 0, "last_error": "e", "kind": "timeout" });
        assert!(serde_json::from_value::<Details>(extra).is_err());
    }

    #[test]
    fn event_ids_are_time_ordered() {
        let a = HealthEvent::new(
            "g",
            None,
            at(0),
            Details::Recovered(RecoveredDetails {
                prior_failure_count: 1,
            }),
        );
        let b = HealthEvent::new(
            "g",
            None,
            at(0),
            Details::Recovered(RecoveredDetails {
                prior_failure_count: 1,
            }),
        );
        assert!(a.event_id < b.event_id);
    }
}
