-- healthprobe initial schema. Table and column names are a contract (DESIGN §4).
-- Only healthprobe's own tables: `runtime_records` belongs to the runtime manager, which
-- creates it (DESIGN §16). Up to 0.5.0 this file also created it when absent; databases
-- migrated then keep it, and `healthprobe migrate` updates this file's recorded checksum.

-- The append-only event log and outbox. Rows are never updated except `published_at`.
-- `seq` gives the relay a commit-ordered cursor that does not depend on clocks.
CREATE TABLE health_events (
    event_id     uuid PRIMARY KEY,
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    game_id      text NOT NULL,
    container_id text NOT NULL DEFAULT '',
    event_type   text NOT NULL CHECK (event_type IN ('probe_failed', 'probe_recovered')),
    occurred_at  timestamptz NOT NULL,
    details      jsonb NOT NULL,
    published_at timestamptz NULL
);

-- The relay only ever looks for unpublished rows; keep that lookup tiny.
CREATE INDEX health_events_unpublished_idx ON health_events (seq) WHERE published_at IS NULL;
CREATE INDEX health_events_game_idx ON health_events (game_id, seq);

-- Latest observation per game: a projection of the log plus the current counters.
-- `episode_failures` counts every failed probe since the episode's first failure; it is
-- what `probe_recovered.prior_failure_count` reports (DESIGN §3).
CREATE TABLE health_snapshots (
    game_id               text PRIMARY KEY,
    status                text NOT NULL CHECK (status IN ('unknown', 'healthy', 'suspect', 'failing')),
    consecutive_failures  integer NOT NULL DEFAULT 0,
    consecutive_successes integer NOT NULL DEFAULT 0,
    episode_failures      integer NOT NULL DEFAULT 0,
    failure_published     boolean NOT NULL DEFAULT false,
    last_probe_at         timestamptz NULL,
    last_success_at       timestamptz NULL,
    last_status           integer NOT NULL DEFAULT 0,
    last_error            text NULL,
    last_failure_kind     text NULL,
    last_latency_ms       double precision NULL,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
