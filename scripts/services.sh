#!/usr/bin/env bash
# Local Postgres and NATS (JetStream) for running and testing healthprobe.
#
#   scripts/services.sh start   install (Debian packages) when missing, start, print env
#   scripts/services.sh install install (Debian packages) when missing, start nothing
#                               (for callers that start them where apt has no network)
#   scripts/services.sh stop    stop what `start` started
#   scripts/services.sh env     print the variables for the running services
#
# Servers listen on 127.0.0.1 on private ports, keep their data under target/services, and
# never touch the system's own Postgres or NATS services.
#
# As root, Postgres runs as the package's `postgres` account, which cannot enter a clone
# in root's home (mode 700 on Debian): its data then lives under
# /var/lib/postgresql/healthprobe/<hash of the clone's path> instead (HEALTHPROBE_PG_DATA
# chooses another place). Postgres is reached over TCP only (no Unix socket), so a path
# with spaces is fine.
#
# Any failure stops `start` with a non-zero exit and a line saying what failed and what to
# do; callers must check it (`env=$(scripts/services.sh start) || exit 1`), since
# `eval "$(...)"` alone would hide it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HEALTHPROBE_SERVICES_DIR:-$ROOT/target/services}"
PG_PORT="${HEALTHPROBE_PG_PORT:-54329}"
NATS_PORT="${HEALTHPROBE_NATS_PORT:-54222}"
if [[ -n "${HEALTHPROBE_PG_DATA:-}" ]]; then
    PG_DATA="$HEALTHPROBE_PG_DATA"
elif [[ $(id -u) -eq 0 ]]; then
    PG_DATA="/var/lib/postgresql/healthprobe/$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
else
    PG_DATA="$STATE/postgres"
fi
NATS_DATA="$STATE/nats"

log() { echo "services: $*" >&2; }
# Says what failed and what to do, then stops the script.
die() {
    log "ERROR: $1"
    shift
    local hint
    for hint in "$@"; do log "  $hint"; done
    exit 1
}

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
        die "Debian packages missing: $*" \
            "install them first (as root: apt-get install $*), or run this script as root"
    fi
    log "installing $* from Debian packages"
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local ok=1
    apt-get update -qq >&2 || ok=0
    if [[ $ok -eq 1 ]]; then
        apt-get install -y -qq --no-install-recommends "$@" >&2 || ok=0
    fi
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    [[ $ok -eq 1 ]] || die "could not install $* with apt-get (its messages are above)" \
        "check the package sources (/etc/apt/sources.list*) and the network, then run again," \
        "or install $* yourself"
    return 0
}

ensure_installed() {
    local missing=()
    pg_bindir >/dev/null || missing+=(postgresql)
    nats_bin >/dev/null || missing+=(nats-server)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    pg_bindir >/dev/null || die "Postgres binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin after installing postgresql" \
        "check that the postgresql package installed cleanly (dpkg -l 'postgresql*')"
    nats_bin >/dev/null || die "nats-server not found on PATH or in /usr/sbin after installing nats-server" \
        "check that the nats-server package installed cleanly (dpkg -l nats-server)"
}

# Postgres refuses to run as root: use the package's `postgres` account then.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 i
    for ((i = 0; i < 100; i++)); do
        port_open "$port" && return 0
        sleep 0.1
    done
    return 1
}

start_postgres() {
    local bin; bin="$(pg_bindir)"
    mkdir -p "$STATE" || die "cannot create $STATE" "check that you may write there"
    if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
        mkdir -p "$PG_DATA" || die "cannot create the Postgres data directory $PG_DATA" \
            "set HEALTHPROBE_PG_DATA to a directory you may create"
        if [[ $(id -u) -eq 0 ]]; then
            chown postgres: "$PG_DATA" && chmod 700 "$PG_DATA" \
                || die "cannot give $PG_DATA to the postgres account"
        fi
        if ! as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --no-instructions >"$STATE/initdb.log" 2>&1; then
            sed 's/^/services:   initdb: /' "$STATE/initdb.log" >&2
            die "initdb could not create the Postgres cluster in $PG_DATA (its messages are above)" \
                "the account running Postgres ($(as_pg id -un)) must be able to enter every directory above it;" \
                "set HEALTHPROBE_PG_DATA to a directory it can reach, or remove a half-made $PG_DATA and run again"
        fi
    fi
    if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        log "Postgres already running on 127.0.0.1:$PG_PORT"; return 0
    fi
    port_open "$PG_PORT" && die "127.0.0.1:$PG_PORT is taken by another program" \
        "stop it, or choose another port with HEALTHPROBE_PG_PORT"
    # Throwaway dev/test server: durability settings off for speed; plenty of connections
    # for parallel tests, each with its own database and pool; pg_stat_statements loaded so
    # the benchmark can count statements per tick. TCP only (no Unix socket directory): the
    # clients here all use TCP, and the data path may hold spaces that `-k` cannot.
    if ! as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 30 start -o \
        "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories= -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_preload_libraries=pg_stat_statements" >/dev/null; then
        tail -20 "$PG_DATA/server.log" 2>/dev/null | sed 's/^/services:   postgres: /' >&2
        die "Postgres did not start on 127.0.0.1:$PG_PORT (its log is above: $PG_DATA/server.log)" \
            "if the port is taken choose another with HEALTHPROBE_PG_PORT"
    fi
    log "Postgres started on 127.0.0.1:$PG_PORT (data $PG_DATA)"
}

start_nats() {
    local bin; bin="$(nats_bin)"
    mkdir -p "$NATS_DATA"
    if [[ -s "$STATE/nats.pid" ]] && kill -0 "$(cat "$STATE/nats.pid")" 2>/dev/null; then
        log "NATS already running on 127.0.0.1:$NATS_PORT"; return 0
    fi
    port_open "$NATS_PORT" && die "127.0.0.1:$NATS_PORT is taken by another program" \
        "stop it, or choose another port with HEALTHPROBE_NATS_PORT"
    setsid "$bin" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DATA" -P "$STATE/nats.pid" -l "$STATE/nats.log" \
        </dev/null >/dev/null 2>&1 &
    if ! wait_port "$NATS_PORT"; then
        tail -20 "$STATE/nats.log" 2>/dev/null | sed 's/^/services:   nats: /' >&2
        die "nats-server did not open 127.0.0.1:$NATS_PORT within 10 s (its log is above: $STATE/nats.log)" \
            "if the port is taken choose another with HEALTHPROBE_NATS_PORT"
    fi
    log "NATS started on 127.0.0.1:$NATS_PORT (data $NATS_DATA)"
}

print_env() {
    printf 'export HEALTHPROBE_LOCAL_DATABASE_URL=%q\n' "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    printf 'export HEALTHPROBE_LOCAL_NATS_URL=%q\n' "nats://127.0.0.1:$NATS_PORT"
    printf 'export HEALTHPROBE_NATS_SERVER_BIN=%q\n' "$(nats_bin)"
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
    install) ensure_installed ;;
    stop) stop_all ;;
    env) print_env ;;
    *) echo "usage: $0 start|install|stop|env" >&2; exit 2 ;;
esac
