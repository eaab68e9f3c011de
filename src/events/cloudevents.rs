//! CloudEvents binary-mode headers (DESIGN §16): every message also says what it is in
//! CloudEvents 1.0 terms, in `ce-` headers beside `Nats-Msg-Id`, so a consumer in a
//! CloudEvents pipeline needs no mapping of its own. The body is the envelope, unchanged
//! (DESIGN §5), and is the event's `data`. Pure: no I/O.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::envelope::HealthEvent;

/// The CloudEvents version these headers follow.
pub(crate) const SPEC_VERSION: &str = "1.0";

/// `datacontenttype`, which the binary mode carries in `content-type`.
pub(crate) const DATA_CONTENT_TYPE: &str = "application/json";

/// The source when `HEALTHPROBE_CLOUDEVENTS_SOURCE` is not set. The same for every
/// replica: CloudEvents identifies an event by `source` and `id`, and a publish repeated by
/// another replica must be the same event.
pub(crate) const DEFAULT_SOURCE: &str = "healthprobe";

/// The headers of `event`, names lower-case as the binding writes them. `prefix` is the
/// subject prefix (`ce-type` = `<prefix>.<event_type>`), `source` the `ce-source`.
pub fn headers(event: &HealthEvent, prefix: &str, source: &str) -> [(&'static str, String); 7] {
    [
        ("ce-specversion", SPEC_VERSION.to_owned()),
        ("ce-id", event.event_id.to_string()),
        ("ce-type", encode_value(&event.subject(prefix))),
        ("ce-source", encode_value(source)),
        ("ce-time", time(event)),
        ("ce-subject", encode_value(&event.game_id)),
        ("content-type", DATA_CONTENT_TYPE.to_owned()),
    ]
}

/// `ce-time`: the body's `occurred_at_ms` as RFC 3339 in UTC, to the millisecond, so the
/// header and the body never disagree.
fn time(event: &HealthEvent) -> String {
    let ms = event.occurred_at.timestamp_millis();
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(event.occurred_at)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A header value as the CloudEvents bindings write one: space, `"`, `%` and everything
/// outside printable ASCII percent-encoded (UTF-8 bytes), so a game id with a line break or
/// any other character can never break the message's header block.
pub fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Details, FailedDetails};

    fn event(game_id: &str) -> HealthEvent {
        let occurred_at = DateTime::parse_from_rfc3339("2026-04-02T10:01:40.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        HealthEvent::new(
            game_id,
            Some("c1"),
            occurred_at,
            Details::Failed(FailedDetails {
                consecutive_failures: 3,
                last_status: 503,
                last_error: "unexpected status 503".into(),
            }),
        )
    }

    #[test]
    fn headers_name_the_event() {
        let event = event("game-42");
        let headers = headers(&event, "runtime.health", DEFAULT_SOURCE);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("ce-specversion"), "1.0");
        assert_eq!(get("ce-id"), event.event_id.to_string());
        assert_eq!(get("ce-type"), "runtime.health.probe_failed");
        assert_eq!(get("ce-source"), "healthprobe");
        assert_eq!(get("ce-subject"), "game-42");
        assert_eq!(get("content-type"), "application/json");
        // Milliseconds, as the body's occurred_at_ms.
        assert_eq!(get("ce-time"), "2026-04-02T10:01:40.123Z");
        assert_eq!(
            DateTime::parse_from_rfc3339(get("ce-time"))
                .unwrap()
                .timestamp_millis(),
            event.envelope().occurred_at_ms
        );
    }

    #[test]
    fn values_that_could_break_a_header_are_encoded() {
        assert_eq!(encode_value("game-42"), "game-42");
        assert_eq!(encode_value("a b"), "a%20b");
        assert_eq!(
            encode_value("x\r\nNats-Msg-Id: y"),
            "x%0D%0ANats-Msg-Id:%20y"
        );
        assert_eq!(encode_value("100%\""), "100%25%22");
        assert_eq!(encode_value("é"), "%C3%A9");
        let headers = headers(&event("evil\r\ngame"), "p", "s");
        for (_, value) in headers {
            assert!(
                value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{value:?}"
            );
        }
    }
}
