-- healthprobe initial schema. Table and column names are a contract (DESIGN §4).

-- Owned by the runtime manager; created here only when absent so the worker can run
-- standalone (and tests can seed it).
CREATE TABLE IF NOT EXISTS runtime_records (
    game_id              text PRIMARY KEY,
    status               text NOT NULL CHECK (status IN ('running', 'stopped', 'removed')),
    current_container_id text NULL,
    current_image_ref    text NULL,
    engine_endpoint      text NOT NULL,
    state_path           text NULL,
    docker_network       text NULL,
    started_at           timestamptz NULL,
    stopped_at           timestamptz NULL,
    removed_at           timestamptz NULL,
    last_op_at           timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- The worker's list query is `WHERE status = 'running' ORDER BY game_id`.
CREATE INDEX IF NOT EXISTS runtime_records_running_idx
    ON runtime_records (game_id) WHERE status = 'running';

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
