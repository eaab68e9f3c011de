#!/usr/bin/env bash
# Runs the healthprobe worker on this machine until Ctrl-C.
#
# With DATABASE_URL and NATS_URL set, uses those servers. Otherwise scripts/services.sh
# installs (Debian packages) and starts a private Postgres and NATS on loopback, with data
# under target/services, and stops them when the worker exits (data is kept for next time).
# Extra arguments go to `healthprobe run` (see `healthprobe run --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${DATABASE_URL:-}" || -z "${NATS_URL:-}" ]]; then
    eval "$(scripts/services.sh start)"
    trap 'scripts/services.sh stop' EXIT
    export DATABASE_URL="${DATABASE_URL:-$HEALTHPROBE_LOCAL_DATABASE_URL}"
    export NATS_URL="${NATS_URL:-$HEALTHPROBE_LOCAL_NATS_URL}"
    echo "run: Postgres at $DATABASE_URL, NATS at $NATS_URL" >&2
fi

cargo build --release --locked --bin healthprobe
target/release/healthprobe run "$@"
