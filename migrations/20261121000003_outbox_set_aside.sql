-- Outbox rows the relay could not decode or publish, set aside so they block nothing
-- (DESIGN §13). `health_events` itself stays append-only: whether a row is set aside lives
-- here, keyed by its event id.
--   state 'set_aside': skipped by the relay, counted on /status, listed by `outbox list`;
--   state 'retry':     given back to the relay by `outbox retry` (set aside again if it
--                      still fails, with attempts + 1);
--   state 'discarded': skipped for good by `outbox discard`; the event stays in the log.
CREATE TABLE health_events_set_aside (
    event_id     uuid PRIMARY KEY REFERENCES health_events (event_id),
    state        text NOT NULL DEFAULT 'set_aside' CHECK (state IN ('set_aside', 'retry', 'discarded')),
    error        text NOT NULL,
    attempts     integer NOT NULL DEFAULT 1,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    changed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX health_events_set_aside_state_idx ON health_events_set_aside (state);
