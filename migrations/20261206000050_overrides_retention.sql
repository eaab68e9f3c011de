-- Per-game probe settings and retention (DESIGN §16).

-- Overrides for the engines that differ. Each NULL column means "the global value"
-- (RTMANAGER_PROBE_PATH, HEALTHPROBE_PROBE_EXPECT, ...). Read with the running list, so a
-- row added, changed or removed takes effect at the next tick. Values are not constrained
-- here: a bad one (an unparsable status range, a negative delay) is reported on /status and
-- in the log, and that game is probed with the global settings.
--   path               the probe path, e.g. '/ready'
--   expect             accepted statuses, e.g. '200-299,301'
--   headers            extra request headers, a JSON object of strings: {"X-Token": "abc"}
--   timeout            bound on one probe, e.g. '5 seconds'
--   failures_threshold consecutive failures before probe_failed
--   initial_delay      grace after the record's started_at before the first probe
--   disabled           never probed; listed as `disabled`
CREATE TABLE health_probe_overrides (
    game_id            text PRIMARY KEY,
    path               text NULL,
    expect             text NULL,
    headers            jsonb NULL,
    timeout            interval NULL,
    failures_threshold integer NULL,
    initial_delay      interval NULL,
    disabled           boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Retention walks published rows oldest first, in small batches.
CREATE INDEX health_events_published_idx ON health_events (published_at, seq)
    WHERE published_at IS NOT NULL;
