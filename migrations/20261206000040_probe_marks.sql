-- Probe times without rewriting rows (issue 19). A game whose probe changed nothing its
-- snapshot row says (the same counters, status and failure kind) is not rewritten; each
-- replica's tick records the last such probe of every game it holds here instead, in one
-- row per replica: when it completed, how long it took, whether it succeeded. Readers take
-- the later of the snapshot row's probe and the mark. A mark never says more than that a
-- probe happened with an outcome the row already states.
CREATE TABLE IF NOT EXISTS health_probe_marks (
    replica_id  text PRIMARY KEY,
    game_ids    text[] NOT NULL,
    probed_at   timestamptz[] NOT NULL,
    latency_ms  float4[] NOT NULL,
    succeeded   boolean[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
