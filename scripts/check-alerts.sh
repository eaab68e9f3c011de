#!/usr/bin/env bash
# Checks deploy/prometheus/alerts.yml with Prometheus' own tool: `promtool check rules`
# (syntax, PromQL, templates) and `promtool test rules` (deploy/prometheus/alerts.test.yml:
# each alert fires on the series that should raise it and not on a healthy fleet).
# promtool comes with Debian's prometheus package, installed by scripts/test.sh when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/deploy/prometheus"

log() { echo "check-alerts: $*" >&2; }

PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -z "$PROMTOOL" && $(id -u) -eq 0 ]]; then
    log "installing Debian's prometheus package (for promtool)"
    # The package would start a system service: keep maintainer scripts from starting it.
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends prometheus; } >&2 || true
    [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    PROMTOOL="$(command -v promtool || true)"
fi
[[ -n "$PROMTOOL" ]] || { log "stopped: promtool is missing (apt-get install prometheus)"; exit 1; }

"$PROMTOOL" check rules alerts.yml >&2
"$PROMTOOL" test rules alerts.test.yml >&2
log "deploy/prometheus/alerts.yml passes promtool check and test ($("$PROMTOOL" --version 2>&1 | head -1))"
