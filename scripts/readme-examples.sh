#!/usr/bin/env bash
# Regenerates the examples in README.md from the current version: builds the binary, starts
# a simulated fleet and the worker against private Postgres and NATS servers (ports 55329 and
# 55222, data under target/readme/services, so nothing else is touched), captures what a
# user sees, and rewrites each block of README.md between
#   <!-- captured: NAME -->  and  <!-- /captured -->
# Run it after a change that shows in those outputs, and before a release (tests/release.rs
# fails when the version in the examples is not Cargo.toml's). Also regenerates the page's
# screenshots (docs/*.png) unless HEALTHPROBE_SKIP_SCREENSHOTS=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "readme-examples: $*" >&2; }

command -v curl >/dev/null || { [[ $(id -u) -eq 0 ]] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >&2; } \
    || { log "stopped: curl is missing (apt-get install curl)"; exit 1; }
OUT="$ROOT/target/readme"
rm -rf "$OUT/captured" && mkdir -p "$OUT/captured"
# Built as the tests build it (same features), so a test run leaves nothing to rebuild.
cargo test --locked --quiet --no-run --test release 2>/dev/null || cargo test --locked --no-run --test release
BIN="$ROOT/target/debug/healthprobe"

export HEALTHPROBE_SERVICES_DIR="$OUT/services" HEALTHPROBE_PG_PORT=55329 HEALTHPROBE_NATS_PORT=55222
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/services.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
# A fresh stream each time (its data is only these examples'), and a fresh database below.
rm -rf "$HEALTHPROBE_SERVICES_DIR/nats"
services_env="$(scripts/services.sh start)" || { log "stopped: Postgres and NATS could not be started"; exit 1; }
eval "$services_env"
admin_url="$HEALTHPROBE_LOCAL_DATABASE_URL"
psql -q "$admin_url" -c 'DROP DATABASE IF EXISTS readme' -c 'CREATE DATABASE readme' >/dev/null
export DATABASE_URL="${admin_url%/*}/readme" NATS_URL="$HEALTHPROBE_LOCAL_NATS_URL"
export RUST_LOG=warn NO_COLOR=1
ADDR=127.0.0.1:55097

"$BIN" migrate
# The runtime manager's table: created here as a runtime manager would (the worker only reads it).
psql -q "$DATABASE_URL" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE IF NOT EXISTS runtime_records (
    game_id text PRIMARY KEY, status text NOT NULL, current_container_id text,
    current_image_ref text, engine_endpoint text NOT NULL, state_path text, docker_network text,
    started_at timestamptz, stopped_at timestamptz, removed_at timestamptz,
    last_op_at timestamptz NOT NULL DEFAULT now(), created_at timestamptz NOT NULL DEFAULT now());
SQL
"$BIN" fleet --engines 6 --mix healthy=3,failing=2,flapping=1 --flap-period 4s --register \
    >"$OUT/fleet.txt" 2>"$OUT/fleet.log" & pids+=($!)
"$BIN" tail >"$OUT/captured/events.raw" 2>"$OUT/tail.log" & pids+=($!)
sleep 1
RTMANAGER_PROBE_INTERVAL=1s RTMANAGER_PROBE_FAILURES_THRESHOLD=2 HEALTHPROBE_HTTP_ADDR=$ADDR \
    HEALTHPROBE_REPLICA_ID=worker-a "$BIN" run 2>"$OUT/worker.log" & pids+=($!)
for _ in $(seq 1 60); do
    grep -q probe_recovered "$OUT/captured/events.raw" 2>/dev/null && break
    sleep 0.5
done
grep -q probe_recovered "$OUT/captured/events.raw" || { log "no probe_recovered within 30 s (see $OUT/worker.log)"; exit 1; }

capture() { # NAME "shown command" command...
    local name="$1" shown="$2"; shift 2
    { echo "\$ $shown"; "$@"; } >"$OUT/captured/$name.txt" 2>&1
}
capture version "healthprobe --version" "$BIN" --version
{ grep -m2 probe_failed "$OUT/captured/events.raw"; grep -m1 probe_recovered "$OUT/captured/events.raw"; } >"$OUT/captured/events.txt"
# The rules are for operators reading /status itself; the README shows the components.
capture status-text "curl -s 'http://127.0.0.1:8097/status?format=text' | grep -v 'rule:'" \
    bash -c "curl -s 'http://$ADDR/status?format=text' | grep -v 'rule:'"
capture status-table "healthprobe status" "$BIN" status
capture members "healthprobe status --members" "$BIN" status --members
capture health "curl -s http://127.0.0.1:8097/healthz; curl -s http://127.0.0.1:8097/readyz" \
    bash -c "curl -s http://$ADDR/healthz; echo; curl -s http://$ADDR/readyz; echo"
capture metrics "curl -s http://127.0.0.1:8097/metrics | grep -E '^healthprobe_(build_info|games|events_total)'" \
    bash -c "curl -s http://$ADDR/metrics | grep -E '^healthprobe_(build_info|games|events_total)' | sed 's/,otel_scope_name=\"healthprobe\"//; s/{otel_scope_name=\"healthprobe\"}//' | sort"

python3 - "$OUT/captured" README.md <<'PY'
import pathlib, re, sys
captured, readme = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
text = readme.read_text()
def block(match):
    name = match.group(1)
    path = captured / f"{name}.txt"
    if not path.exists():
        sys.exit(f"readme-examples: README.md wants {name!r}, which this script does not capture")
    body = path.read_text().rstrip("\n")
    return f"<!-- captured: {name} -->\n```text\n{body}\n```\n<!-- /captured -->"
new, count = re.subn(r"<!-- captured: ([a-z-]+) -->\n.*?<!-- /captured -->", block, text, flags=re.S)
readme.write_text(new)
print(f"readme-examples: {count} blocks of README.md rewritten", file=sys.stderr)
PY

if [[ "${HEALTHPROBE_SKIP_SCREENSHOTS:-}" != 1 ]]; then
    log "regenerating the page's screenshots (tests/page.rs)"
    # Its own servers (scripts/services.sh), not the ones stopped above.
    cleanup; trap - EXIT
    env -u DATABASE_URL -u NATS_URL \
        HEALTHPROBE_SERVICES_DIR="$OUT/services" HEALTHPROBE_PG_PORT=55329 HEALTHPROBE_NATS_PORT=55222 \
        scripts/screenshots.sh
fi
