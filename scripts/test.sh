#!/usr/bin/env bash
# Runs the whole test suite against real Postgres and NATS (JetStream) on loopback.
#
# Servers come from HEALTHPROBE_TEST_DATABASE_URL / HEALTHPROBE_TEST_NATS_URL when both are
# set; otherwise scripts/services.sh installs (Debian packages) and starts private ones
# under target/services and stops them afterwards. Extra arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${HEALTHPROBE_TEST_DATABASE_URL:-}" || -z "${HEALTHPROBE_TEST_NATS_URL:-}" ]]; then
    # Stops whatever was started, also when the start fails half-way.
    trap 'scripts/services.sh stop' EXIT
    # `eval "$(...)"` alone would ignore a failed start and go on to a follow-on error.
    services_env="$(scripts/services.sh start)" \
        || { echo "test: stopped: Postgres and NATS could not be started (the reason is above)" >&2; exit 1; }
    eval "$services_env"
    export HEALTHPROBE_TEST_DATABASE_URL="$HEALTHPROBE_LOCAL_DATABASE_URL"
    export HEALTHPROBE_TEST_NATS_URL="$HEALTHPROBE_LOCAL_NATS_URL"
fi
# Tests that stop and restart a NATS server of their own need the binary.
if [[ -z "${HEALTHPROBE_NATS_SERVER_BIN:-}" ]]; then
    HEALTHPROBE_NATS_SERVER_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
    export HEALTHPROBE_NATS_SERVER_BIN
fi

# The deployment files (compose, Dockerfile) are checked first: quick, no Docker needed.
scripts/lint-deploy.sh

cargo test --locked --all-targets "$@"

# Containers (issue 12): base images, the image from the Dockerfile, `docker compose up` and
# the testcontainers path, against a Docker engine (started here, as root, when none runs).
# Whole-suite runs only (no arguments); HEALTHPROBE_SKIP_CONTAINERS=1 skips it.
if [[ $# -eq 0 && "${HEALTHPROBE_SKIP_CONTAINERS:-}" != 1 ]]; then
    scripts/containers-check.sh
fi
