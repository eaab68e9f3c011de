#!/usr/bin/env bash
# The benchmark harness (not part of the test run): real Postgres and NATS, a simulated
# fleet in a separate `healthprobe fleet` process, the worker's tick run for real, and wrk
# against the same fleet as the machine's ceiling. Prints Markdown tables; a copy goes to
# target/bench/.
#
#   scripts/bench.sh                       # the full grid (about 10 minutes)
#   HEALTHPROBE_BENCH_RECORDS=1000,10000 HEALTHPROBE_BENCH_CONCURRENCY=64,256 scripts/bench.sh
#
# See benches/tick.rs for the variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v wrk >/dev/null; then
    [[ $(id -u) -eq 0 ]] || { echo "bench: install wrk (Debian package) first" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
# 1,024 probes in flight plus wrk's 1,024 connections need more than the default 1,024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

trap 'scripts/services.sh stop' EXIT
# `eval "$(...)"` alone would ignore a failed start and go on to a follow-on error.
services_env="$(scripts/services.sh start)" \
    || { echo "bench: stopped: Postgres and NATS could not be started (the reason is above)" >&2; exit 1; }
eval "$services_env"
export HEALTHPROBE_BENCH_DATABASE_URL="${HEALTHPROBE_BENCH_DATABASE_URL:-$HEALTHPROBE_LOCAL_DATABASE_URL}"
export HEALTHPROBE_BENCH_NATS_URL="${HEALTHPROBE_BENCH_NATS_URL:-$HEALTHPROBE_LOCAL_NATS_URL}"
export HEALTHPROBE_BENCH_BIN="$ROOT/target/release/healthprobe"

cargo build --release --locked --bin healthprobe
mkdir -p target/bench
out="target/bench/results-$(date -u +%Y%m%dT%H%M%SZ).md"
{
    echo "# healthprobe benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo
    cargo bench --locked --bench tick
} | tee "$out"
echo "bench: results in $out" >&2
