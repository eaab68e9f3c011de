#!/usr/bin/env bash
# Prepares the example consumers of examples/consumers/ for tests/consumers.rs and prints
# where they are, as shell assignments:
#   HEALTHPROBE_CONSUMER_PYTHON=<python of a virtual environment with nats-py>
#   HEALTHPROBE_CONSUMER_GO=<the Go consumer, built>
# Python: a virtual environment in target/tools/consumers-venv with requirements.txt.
# Go: Debian's golang-go and golang-github-nats-io-go-nats-dev (installed as root when
# missing), built offline in GOPATH mode against /usr/share/gocode (no module download).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "consumers-setup: $*" >&2; }
mkdir -p target/tools target/consumers

apt_install() {
    [[ $(id -u) -eq 0 ]] || { log "stopped: $* missing and not root (apt-get install $*)"; exit 1; }
    log "installing Debian's $*"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "$@"; }; } >>target/tools/apt.log 2>&1 \
        || { log "stopped: could not install $* (see target/tools/apt.log)"; exit 1; }
}

VENV="$ROOT/target/tools/consumers-venv"
requirements=examples/consumers/python/requirements.txt
if ! cmp -s "$requirements" "$VENV/requirements.txt" 2>/dev/null; then
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV" >&2
    log "installing $requirements into $VENV"
    "$VENV/bin/pip" install -q -r "$requirements" >&2 || { log "stopped: pip could not install nats-py"; exit 1; }
    cp "$requirements" "$VENV/requirements.txt"
fi

command -v go >/dev/null || apt_install golang-go
[[ -d /usr/share/gocode/src/github.com/nats-io/nats.go ]] || apt_install golang-github-nats-io-go-nats-dev
GO_BIN="$ROOT/target/consumers/go-consumer"
# GOPATH mode: the imports come from Debian's packaged sources, go.mod is not read.
(cd examples/consumers/go \
    && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$ROOT/target/consumers/go-cache" GOFLAGS= \
        go build -o "$GO_BIN" .) >&2 || { log "stopped: the Go consumer does not build"; exit 1; }

printf 'HEALTHPROBE_CONSUMER_PYTHON=%q\nHEALTHPROBE_CONSUMER_GO=%q\n' "$VENV/bin/python" "$GO_BIN"
