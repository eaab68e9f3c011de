#!/usr/bin/env bash
# The benchmark harness (not part of the test run). Prints Markdown tables; a copy goes to
# target/bench/.
#
#   scripts/bench.sh            both suites below (the full grids: about 30 minutes)
#   scripts/bench.sh fleet      the worker as users run it, beside the Go worker, against
#                               nginx, at one address and at distinct addresses
#   scripts/bench.sh stack      the HTTP stack alone (benches/stack.rs) against the fleet
#                               suite's nginx, without the workers
#   scripts/bench.sh tick       the worker's tick() in a child process against the
#                               simulated fleet, over a grid of concurrencies
#
# A reduced fleet grid (a few minutes):
#   HEALTHPROBE_BENCH_FLEET_ENGINES=10000 HEALTHPROBE_BENCH_FLEET_ROUNDS=1 scripts/bench.sh fleet
#
# `fleet` runs everything (nginx, Postgres, NATS, both workers, wrk) inside a network
# namespace it creates and removes, where nginx listens on 0.0.0.0 so every 127.x.y.z
# reaches it. It needs root (for the namespace) and installs nginx-light, wrk and iproute2
# from Debian's packages when missing; the Go worker is built by ../shared/peer/go/build.sh
# (HEALTHPROBE_BENCH_GOPEER_DIR chooses another copy; without one the Go column is left
# out). HEALTHPROBE_BENCH_BIN measures another healthprobe binary (another branch's build)
# in the fleet suite, and HEALTHPROBE_BENCH_BIN_B a second one in the same rounds (an A/B of
# two builds, alternating: the worker "healthprobe B"); after its runs the fleet suite measures the HTTP stack alone against the
# same nginx (benches/stack.rs; HEALTHPROBE_BENCH_STACK=0 leaves it out). See
# benches/fleet.rs, benches/stack.rs and benches/tick.rs for the variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUITE="${1:-all}"
case "$SUITE" in
    all | fleet | tick | stack) ;;
    *) echo "bench: unknown suite '$SUITE' (all, fleet, stack or tick)" >&2; exit 2 ;;
esac

# Installs Debian packages that are missing, without letting their maintainer scripts start
# system services (nginx's would start a server on port 80).
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || { echo "bench: install ${missing[*]} (Debian packages) first, or run as root" >&2; exit 1; }
    echo "bench: installing ${missing[*]} from Debian packages" >&2
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
    fi
    local ok=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || ok=0
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    [[ $ok -eq 1 ]] || { echo "bench: could not install ${missing[*]}" >&2; exit 1; }
}

mkdir -p target/bench
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
machine_line() {
    echo "$(date -u +%Y-%m-%d\ %H:%M\ UTC), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo "+changes")"
}

# The tick suite: the worker's tick() in a child process, the simulated fleet, wrk beside it.
run_tick_suite() (
    install_missing wrk
    # 1,024 probes in flight plus wrk's 1,024 connections need more than the default 1,024 fds.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    trap 'scripts/services.sh stop' EXIT
    # `eval "$(...)"` alone would ignore a failed start and go on to a follow-on error.
    services_env="$(scripts/services.sh start)" \
        || { echo "bench: stopped: Postgres and NATS could not be started (the reason is above)" >&2; exit 1; }
    eval "$services_env"
    export HEALTHPROBE_BENCH_DATABASE_URL="${HEALTHPROBE_BENCH_DATABASE_URL:-$HEALTHPROBE_LOCAL_DATABASE_URL}"
    export HEALTHPROBE_BENCH_NATS_URL="${HEALTHPROBE_BENCH_NATS_URL:-$HEALTHPROBE_LOCAL_NATS_URL}"
    export HEALTHPROBE_BENCH_BIN="$ROOT/target/release/healthprobe"
    cargo build --release --locked --bin healthprobe
    out="target/bench/results-$STAMP.md"
    {
        echo "# healthprobe tick benchmark, $(machine_line)"
        echo
        cargo bench --locked --bench tick
    } | tee "$out"
    echo "bench: results in $out" >&2
)

# The fleet suite: `healthprobe run` and the Go worker, as users run them, against nginx.
run_fleet_suite() (
    [[ $(id -u) -eq 0 ]] || { echo "bench: the fleet suite needs root: it creates a network namespace" >&2; exit 1; }
    install_missing nginx-light wrk iproute2
    local gopeer_dir="${HEALTHPROBE_BENCH_GOPEER_DIR:-$ROOT/../shared/peer/go}" gopeer=""
    if [[ -f "$gopeer_dir/build.sh" ]]; then
        gopeer="$(GOPEER_OUT="$ROOT/target/gopeer" sh "$gopeer_dir/build.sh" | tail -1)"
        [[ -x "$gopeer" ]] || { echo "bench: the Go worker did not build (its messages are above)" >&2; exit 1; }
    else
        echo "bench: no Go worker at $gopeer_dir (HEALTHPROBE_BENCH_GOPEER_DIR): its column is left out" >&2
    fi
    cargo build --release --locked --bin healthprobe
    local harness
    harness="$(cargo bench --locked --bench fleet --no-run --message-format=json 2>/dev/null \
        | grep '"name":"fleet"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
    [[ -x "$harness" ]] || { echo "bench: could not build benches/fleet.rs (cargo bench --bench fleet --no-run)" >&2; exit 1; }
    local stack=""
    if [[ ${HEALTHPROBE_BENCH_STACK:-1} != 0 ]]; then
        stack="$(cargo bench --locked --bench stack --no-run --message-format=json 2>/dev/null \
            | grep '"name":"stack"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
        [[ -x "$stack" ]] || { echo "bench: could not build benches/stack.rs (cargo bench --bench stack --no-run)" >&2; exit 1; }
    fi

    # Postgres and NATS are started inside the namespace, which has only loopback: install
    # them here, where apt reaches the package registry.
    scripts/services.sh install \
        || { echo "bench: stopped: Postgres and NATS could not be installed (the reason is above)" >&2; exit 1; }
    local ns="hpbench-$$" nginx_dir="$ROOT/target/bench/nginx" services_dir="$ROOT/target/bench/services"
    local port="${HEALTHPROBE_BENCH_NGINX_PORT:-8080}"
    in_ns() { ip netns exec "$ns" "$@"; }
    cleanup() {
        if [[ -s "$nginx_dir/nginx.pid" ]]; then
            kill -QUIT "$(cat "$nginx_dir/nginx.pid")" 2>/dev/null || true
        fi
        in_ns env HEALTHPROBE_SERVICES_DIR="$services_dir" scripts/services.sh stop || true
        ip netns del "$ns" 2>/dev/null || true
    }
    ip netns add "$ns" || { echo "bench: could not create the network namespace $ns (ip netns add)" >&2; exit 1; }
    trap cleanup EXIT
    in_ns ip link set lo up
    services_env="$(in_ns env HEALTHPROBE_SERVICES_DIR="$services_dir" scripts/services.sh start)" \
        || { echo "bench: stopped: Postgres and NATS could not be started (the reason is above)" >&2; exit 1; }
    eval "$services_env"

    # nginx, the fleet: every engine answers 200 "ok"; keep-alive connections are never
    # closed by nginx during a run (300 s idle, unlimited requests), as an engine's would not.
    # As many connections as the hard descriptor limit allows (nginx cannot raise it here).
    local nofile; nofile="$(ulimit -Hn)"; [[ $nofile == unlimited ]] && nofile=1048576
    mkdir -p "$nginx_dir/tmp"
    rm -f "$nginx_dir/nginx.pid"
    cat >"$nginx_dir/nginx.conf" <<NGINX
daemon on;
pid $nginx_dir/nginx.pid;
worker_processes ${HEALTHPROBE_BENCH_NGINX_WORKERS:-auto};
worker_rlimit_nofile $nofile;
error_log $nginx_dir/error.log warn;
events { worker_connections $((nofile - 64)); }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $nginx_dir/tmp/body;
    proxy_temp_path $nginx_dir/tmp/proxy;
    fastcgi_temp_path $nginx_dir/tmp/fastcgi;
    server {
        listen 0.0.0.0:$port backlog=4096;
        location / { default_type text/plain; return 200 "ok"; }
    }
}
NGINX
    in_ns nginx -e "$nginx_dir/error.log" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" \
        || { echo "bench: nginx did not start ($nginx_dir/error.log)" >&2; exit 1; }

    out="target/bench/fleet-$STAMP.md"
    {
        echo "# healthprobe fleet benchmark, $(machine_line)"
        echo
        echo "healthprobe binary: ${HEALTHPROBE_BENCH_BIN:-$ROOT/target/release/healthprobe}${HEALTHPROBE_BENCH_BIN_B:+; healthprobe B: $HEALTHPROBE_BENCH_BIN_B}; Go worker: ${gopeer:-none}"
        echo
        in_ns env \
            HEALTHPROBE_BENCH_DATABASE_URL="$HEALTHPROBE_LOCAL_DATABASE_URL" \
            HEALTHPROBE_BENCH_NATS_URL="$HEALTHPROBE_LOCAL_NATS_URL" \
            HEALTHPROBE_BENCH_BIN="${HEALTHPROBE_BENCH_BIN:-$ROOT/target/release/healthprobe}" \
            HEALTHPROBE_BENCH_BIN_B="${HEALTHPROBE_BENCH_BIN_B:-}" \
            HEALTHPROBE_BENCH_GOPEER="$gopeer" \
            HEALTHPROBE_BENCH_NGINX_PORT="$port" \
            HEALTHPROBE_BENCH_OUT="$ROOT/target/bench/fleet-$STAMP.jsonl" \
            ${ONLY_STACK:+true} "$harness" --bench
        if [[ -n $stack ]]; then
            # The HTTP stack alone against the same nginx (benches/stack.rs).
            in_ns env HEALTHPROBE_BENCH_STACK_URL="http://127.0.0.1:$port" "$stack" --bench
        fi
    } | tee "$out"
    echo "bench: results in $out (every tick of every run in target/bench/fleet-$STAMP.jsonl)" >&2
)

case "$SUITE" in
    fleet) run_fleet_suite ;;
    stack) ONLY_STACK=1 HEALTHPROBE_BENCH_STACK=1 run_fleet_suite ;;
    tick) run_tick_suite ;;
    all) run_fleet_suite; run_tick_suite ;;
esac
