#!/usr/bin/env bash
# The one-command demo: Postgres and NATS, a simulated engine fleet in which some engines
# fail and recover, the worker, and the health events printed live as they are published,
# until Ctrl-C (everything started here is stopped cleanly).
#
#   scripts/run.sh                  the demo
#   scripts/run.sh --worker-only    just `healthprobe run` (the plain worker), until Ctrl-C
#
# With DATABASE_URL and NATS_URL set, uses those servers. Otherwise scripts/services.sh
# installs (Debian packages) and starts a private Postgres and NATS on loopback, with data
# under target/services, and stops them on exit (data is kept for next time).
# Demo knobs (environment): DEMO_ENGINES (12), DEMO_MIX, DEMO_INTERVAL (2s),
# HEALTHPROBE_HTTP_ADDR (127.0.0.1:8097). Extra arguments go to `healthprobe run`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WORKER_ONLY=0
if [[ "${1:-}" == "--worker-only" ]]; then
    WORKER_ONLY=1
    shift
fi

PIDS=()
cleanup() {
    local pid
    trap - EXIT INT TERM
    # Ctrl-C may have closed the terminal's pipe (`scripts/run.sh | tee log`): a failed
    # write must not cut the cleanup short.
    trap '' PIPE
    # Stop in reverse order of start: tail, worker, fleet. Each exits on SIGTERM.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${STARTED_SERVICES:-0} -eq 1 ]]; then scripts/services.sh stop; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${DATABASE_URL:-}" || -z "${NATS_URL:-}" ]]; then
    STARTED_SERVICES=1 # cleanup stops whatever was started, also after a failed start
    # `eval "$(...)"` alone would ignore a failed start and go on to a follow-on error.
    services_env="$(scripts/services.sh start)" \
        || { echo "run: stopped: Postgres and NATS could not be started (the reason is above)" >&2; exit 1; }
    eval "$services_env"
    export DATABASE_URL="${DATABASE_URL:-$HEALTHPROBE_LOCAL_DATABASE_URL}"
    export NATS_URL="${NATS_URL:-$HEALTHPROBE_LOCAL_NATS_URL}"
    echo "run: Postgres at $DATABASE_URL, NATS at $NATS_URL" >&2
fi

cargo build --release --locked --bin healthprobe
BIN=target/release/healthprobe

if [[ $WORKER_ONLY -eq 1 ]]; then
    echo "run: the fleet page at http://${HEALTHPROBE_HTTP_ADDR:-127.0.0.1:8097}/ (metrics at /metrics)" >&2
    "$BIN" run "$@" &
    PIDS+=($!)
    wait "${PIDS[0]}"
    exit $?
fi

LOGS="$ROOT/target/demo"
mkdir -p "$LOGS"
export HEALTHPROBE_HTTP_ADDR="${HEALTHPROBE_HTTP_ADDR:-127.0.0.1:8097}"
"$BIN" migrate 2>>"$LOGS/worker.log"

# Engines that fail for good, flap (down and back up every 8 s) and time out, among
# healthy ones; registered as running games, marked stopped again on exit.
"$BIN" fleet --engines "${DEMO_ENGINES:-12}" \
    --mix "${DEMO_MIX:-healthy=6,flapping=3,failing=2,slow=1}" \
    --flap-period 8s --slow-delay 3s --register \
    >"$LOGS/fleet.txt" 2>"$LOGS/fleet.log" &
PIDS+=($!)

# A fast worker so the demo moves: tick every 2 s, a failure after 2 bad probes.
RTMANAGER_PROBE_INTERVAL="${DEMO_INTERVAL:-2s}" RTMANAGER_PROBE_TIMEOUT=1s \
    RTMANAGER_PROBE_FAILURES_THRESHOLD=2 \
    "$BIN" run "$@" 2>>"$LOGS/worker.log" &
PIDS+=($!)

cat >&2 <<EOF
demo: fleet of ${DEMO_ENGINES:-12} engines (list: $LOGS/fleet.txt), worker ticking every ${DEMO_INTERVAL:-2s}
demo: logs in $LOGS/worker.log and $LOGS/fleet.log
demo: the fleet page (live):  http://$HEALTHPROBE_HTTP_ADDR/
demo: Prometheus metrics:     http://$HEALTHPROBE_HTTP_ADDR/metrics
demo: try  curl -s http://$HEALTHPROBE_HTTP_ADDR/status?format=text
demo:      curl -s 'http://$HEALTHPROBE_HTTP_ADDR/games?status=failing'
demo:      $BIN status
demo: health events as they are published (Ctrl-C to stop everything):
EOF
"$BIN" tail 2>>"$LOGS/tail.log" &
PIDS+=($!)
# Any of the three ending stops the demo.
wait -n "${PIDS[@]}"
