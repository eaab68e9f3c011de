#!/usr/bin/env bash
# Regenerates the fleet page's screenshots in docs/ from the current code: tests/page.rs
# drives the page in headless Chromium over the demo fleet and writes docs/fleet-page.png
# (laptop) and docs/fleet-page-phone.png (phone). Servers as for scripts/test.sh:
# HEALTHPROBE_TEST_DATABASE_URL / HEALTHPROBE_TEST_NATS_URL, else local ones started here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${HEALTHPROBE_TEST_DATABASE_URL:-}" || -z "${HEALTHPROBE_TEST_NATS_URL:-}" ]]; then
    trap 'scripts/services.sh stop' EXIT
    services_env="$(scripts/services.sh start)" || { echo "screenshots: Postgres and NATS could not be started" >&2; exit 1; }
    eval "$services_env"
    export HEALTHPROBE_TEST_DATABASE_URL="$HEALTHPROBE_LOCAL_DATABASE_URL"
    export HEALTHPROBE_TEST_NATS_URL="$HEALTHPROBE_LOCAL_NATS_URL"
fi
HEALTHPROBE_UPDATE_SCREENSHOTS=1 cargo test --locked --test page screenshot -- --nocapture
