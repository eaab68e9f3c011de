#!/usr/bin/env bash
# Local Postgres and NATS (JetStream) for running and testing healthprobe.
#
#   scripts/services.sh start   install (Debian packages) when missing, start, print env
#   scripts/services.sh stop    stop what `start` started
#   scripts/services.sh env     print the variables for the running services
#
# Servers listen on 127.0.0.1 on private ports, keep their data under target/services, and
# never touch the system's own Postgres or NATS services.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HEALTHPROBE_SERVICES_DIR:-$ROOT/target/services}"
PG_PORT="${HEALTHPROBE_PG_PORT:-54329}"
NATS_PORT="${HEALTHPROBE_NATS_PORT:-54222}"
PG_DATA="$STATE/postgres"
NATS_DATA="$STATE/nats"

log() { echo "services: $*" >&2; }

pg_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && { echo "$dir"; return 0; }
    done
    return 1
}

nats_bin() { command -v nats-server || { [[ -x /usr/sbin/nats-server ]] && echo /usr/sbin/nats-server; }; }

# Installs Debian packages without letting their maintainer scripts start system services.
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        log "need root to install $*; install them or run as root"; exit 1
    fi
    log "installing $* from Debian packages"
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >&2
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    return 0
}

ensure_installed() {
    local missing=()
    pg_bindir >/dev/null || missing+=(postgresql)
    nats_bin >/dev/null || missing+=(nats-server)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    pg_bindir >/dev/null || { log "Postgres binaries not found after install"; exit 1; }
    nats_bin >/dev/null || { log "nats-server not found after install"; exit 1; }
}

# Postgres refuses to run as root: use the package's `postgres` account then.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2 i
    for ((i = 0; i < 100; i++)); do
        port_open "$port" && return 0
        sleep 0.1
    done
    log "$what did not open 127.0.0.1:$port within 10 s"; return 1
}

start_postgres() {
    local bin; bin="$(pg_bindir)"
    mkdir -p "$STATE"
    if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
        mkdir -p "$PG_DATA"
        [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DATA" && chmod 700 "$PG_DATA"
        as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --no-instructions >"$STATE/initdb.log" 2>&1 \
            || { cat "$STATE/initdb.log" >&2; exit 1; }
    fi
    if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        log "Postgres already running on 127.0.0.1:$PG_PORT"; return 0
    fi
    # Throwaway dev/test server: durability settings off for speed; plenty of connections
    # for parallel tests, each with its own database and pool; pg_stat_statements loaded so
    # the benchmark can count statements per tick.
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 30 start -o \
        "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_preload_libraries=pg_stat_statements" >/dev/null \
        || { tail -20 "$PG_DATA/server.log" >&2; exit 1; }
    log "Postgres started on 127.0.0.1:$PG_PORT (data $PG_DATA)"
}

start_nats() {
    local bin; bin="$(nats_bin)"
    mkdir -p "$NATS_DATA"
    if [[ -s "$STATE/nats.pid" ]] && kill -0 "$(cat "$STATE/nats.pid")" 2>/dev/null; then
        log "NATS already running on 127.0.0.1:$NATS_PORT"; return 0
    fi
    setsid "$bin" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DATA" -P "$STATE/nats.pid" -l "$STATE/nats.log" \
        </dev/null >/dev/null 2>&1 &
    wait_port "$NATS_PORT" NATS || { tail -20 "$STATE/nats.log" >&2; exit 1; }
    log "NATS started on 127.0.0.1:$NATS_PORT (data $NATS_DATA)"
}

print_env() {
    echo "export HEALTHPROBE_LOCAL_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "export HEALTHPROBE_LOCAL_NATS_URL=nats://127.0.0.1:$NATS_PORT"
    echo "export HEALTHPROBE_NATS_SERVER_BIN=$(nats_bin)"
}

stop_all() {
    local bin
    if bin="$(pg_bindir)" && [[ -s "$PG_DATA/PG_VERSION" ]]; then
        as_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 && log "Postgres stopped" || true
    fi
    if [[ -s "$STATE/nats.pid" ]]; then
        kill "$(cat "$STATE/nats.pid")" 2>/dev/null && log "NATS stopped" || true
        rm -f "$STATE/nats.pid"
    fi
}

case "${1:-}" in
    start) ensure_installed; start_postgres; start_nats; print_env ;;
    stop) stop_all ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
