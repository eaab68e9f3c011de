-- The runtime manager's table as healthprobe reads it (DESIGN §4). healthprobe never
-- creates it in a real deployment: the runtime manager owns it, and the worker's role needs
-- only SELECT on it. The simulated fleet (`healthprobe fleet --register`), the demo and
-- the tests create it with this when it is absent, playing the runtime manager's part.
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
