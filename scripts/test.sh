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

# --- Operator's view (issue 13): the fleet page runs in headless Chromium driven by
# chromedriver (tests/page.rs), and a Prometheus server scrapes /metrics
# (tests/prometheus.rs). Debian packages, installed when missing and this runs as root;
# otherwise those tests fail naming what to install (HEALTHPROBE_SKIP_BROWSER=1 /
# HEALTHPROBE_SKIP_PROMETHEUS=1 skip them instead).
operator_view_packages=()
[[ -x /usr/bin/chromium ]] || operator_view_packages+=(chromium)
[[ -x /usr/bin/chromedriver ]] || operator_view_packages+=(chromium-driver)
[[ -x /usr/bin/prometheus ]] || operator_view_packages+=(prometheus)
# tests/prober.rs makes its https engines' certificates with the openssl command.
command -v openssl >/dev/null || operator_view_packages+=(openssl)
# tests/prober.rs and tests/storm_netns.rs make network namespaces with the ip command (a bare
# Debian 12 machine has no iproute2).
command -v ip >/dev/null || operator_view_packages+=(iproute2)
if [[ ${#operator_view_packages[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "test: installing ${operator_view_packages[*]} (Debian packages) for the page and Prometheus tests" >&2
        # The prometheus package would start a system service: keep maintainer scripts from
        # starting anything, as scripts/services.sh does.
        created_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
        fi
        apt-get update -qq >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${operator_view_packages[@]}" >&2 \
            || { [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
                 echo "test: stopped: could not install ${operator_view_packages[*]} (apt's messages are above); install them, or set HEALTHPROBE_SKIP_BROWSER=1 / HEALTHPROBE_SKIP_PROMETHEUS=1" >&2
                 exit 1; }
        [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    else
        echo "test: ${operator_view_packages[*]} missing and not root: tests/page.rs and tests/prometheus.rs will say what to install" >&2
    fi
fi
# --- end of the operator's view block

# The deployment files (compose, Dockerfile) are checked first: quick, no Docker needed.
scripts/lint-deploy.sh

cargo test --locked --all-targets "$@"

# Containers (issue 12): base images, the image from the Dockerfile, `docker compose up` and
# the testcontainers path, against a Docker engine (started here, as root, when none runs).
# Whole-suite runs only (no arguments); HEALTHPROBE_SKIP_CONTAINERS=1 skips it.
if [[ $# -eq 0 && "${HEALTHPROBE_SKIP_CONTAINERS:-}" != 1 ]]; then
    scripts/containers-check.sh
fi
