#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: every manifest against the Kubernetes API schemas
# shipped inside the `kubernetes-validate` Python package (strict: unknown fields fail), then
# the properties a deployer relies on (scripts/check_kubernetes.py: replicas, probes,
# security context, resources, selectors, the migrate Job, the image tag). The package is
# installed into target/tools/venv when missing (python3-venv from Debian first, as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "check-kubernetes: $*" >&2; }

VENV="$ROOT/target/tools/venv"
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        [[ $(id -u) -eq 0 ]] || { log "stopped: python3-venv is missing (apt-get install python3-venv)"; exit 1; }
        log "installing Debian's python3-venv package"
        mkdir -p target/tools
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    --no-install-recommends python3-venv; }; } >>target/tools/apt.log 2>&1 \
            || { log "stopped: could not install python3-venv (see target/tools/apt.log)"; exit 1; }
    fi
    [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV" >&2
    log "installing kubernetes-validate (Python package) into $VENV"
    "$VENV/bin/pip" install -q kubernetes-validate >&2 \
        || { log "stopped: could not install kubernetes-validate"; exit 1; }
fi

# The Kustomization itself has no API schema; check_kubernetes.py checks it.
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
out="$("$VENV/bin/kubernetes-validate" --strict "${manifests[@]}" 2>&1)" \
    || { echo "$out" >&2; log "FAILED: a manifest does not match the Kubernetes schemas"; exit 1; }
echo "$out" >&2
if grep -q '^WARN' <<<"$out"; then
    log "FAILED: a manifest could not be checked against a schema (warnings above)"; exit 1
fi
"$VENV/bin/python" scripts/check_kubernetes.py deploy/kubernetes
log "deploy/kubernetes is valid ($("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1))"
