-- The mass-failure hold (DESIGN §15): each replica tells the others its last tick's
-- figures (games owned; of those, games not seen healthy), so a replica whose engines fail
-- where the others' do not knows the fault is its own. `degraded`: it stepped out of the
-- membership meanwhile and owns no game (the others share its games) until its own probes
-- succeed again. NULL figures: a replica of an earlier version, or before its first tick.
ALTER TABLE healthprobe_members
    ADD COLUMN owned_games   integer NULL,
    ADD COLUMN failing_games integer NULL,
    ADD COLUMN degraded      boolean NOT NULL DEFAULT false;
