-- Several replicas (DESIGN §12) and a runtime is a game and its container (DESIGN §3).

-- Optimistic concurrency: every write of a snapshot gives it a new `version` and is
-- conditional on the version its writer last read, so a writer with a stale view (another
-- replica wrote, or its own commit's outcome was unknown) changes nothing and reloads.
-- Versions come from one sequence rather than counting per row: a row pruned and created
-- again must never repeat a version that a stale writer still holds.
-- `container_id` is the container the counters belong to: a new container starts clean.
CREATE SEQUENCE health_snapshots_version_seq;
ALTER TABLE health_snapshots
    ADD COLUMN version      bigint NOT NULL DEFAULT nextval('health_snapshots_version_seq'),
    ADD COLUMN container_id text NULL;

-- Rows written before this migration belong to the container the record has now, so an
-- upgrade does not restart any episode. A new database has no rows and may not have the
-- runtime manager's table yet, hence the guard.
DO $$
BEGIN
    IF to_regclass('runtime_records') IS NOT NULL THEN
        UPDATE health_snapshots s
           SET container_id = r.current_container_id
          FROM runtime_records r
         WHERE r.game_id = s.game_id;
    END IF;
END
$$;

-- `episode` numbers a game's failure episodes (1, 2, ...), never reset, so that a second
-- `probe_failed` or `probe_recovered` for the same episode cannot be inserted, whoever
-- writes it. New rows always carry it; it is NULL only for duplicates that an older
-- version wrote before this key existed.
ALTER TABLE health_events ADD COLUMN episode bigint NULL;

WITH numbered AS (
    SELECT event_id, game_id, event_type,
           sum(CASE WHEN event_type = 'probe_failed' THEN 1 ELSE 0 END)
               OVER (PARTITION BY game_id ORDER BY seq) AS episode,
           seq
      FROM health_events
), firsts AS (
    SELECT event_id, episode,
           row_number() OVER (PARTITION BY game_id, episode, event_type ORDER BY seq) AS nth
      FROM numbered
)
UPDATE health_events e
   SET episode = f.episode
  FROM firsts f
 WHERE f.event_id = e.event_id AND f.nth = 1;

CREATE UNIQUE INDEX health_events_episode_key ON health_events (game_id, episode, event_type);

-- Replicas find each other here: each heartbeats its row and holds a lease until
-- `lease_expires_at` (Postgres' clock, so replicas' clocks need not agree). Games are
-- shared among the members whose lease has not expired. `relay_pid` is the backend pid of
-- the connection holding the relay's advisory lock, so a replica can end the session of a
-- frozen holder whose lease expired.
CREATE TABLE healthprobe_members (
    replica_id       text PRIMARY KEY,
    status_addr      text NULL,
    version          text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    relay_pid        integer NULL
);
