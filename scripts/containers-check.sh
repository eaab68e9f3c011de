#!/usr/bin/env bash
# The container paths, for real, against a Docker engine on this machine:
#   1. base images: scripts/images.sh (local stand-ins for what no registry gives here);
#   2. the service image from the Dockerfile as it is (healthprobe:local);
#   3. `docker compose up` of docker-compose.yml, checked from the host: /status answers OK
#      on 127.0.0.1:8097, the `events` service prints probe_failed and probe_recovered, the
#      service containers run as uid 10001; then `down -v` must leave no container, network
#      or volume behind;
#   4. testcontainers: test binaries with HEALTHPROBE_TEST_* unset, so the tests start
#      Postgres and NATS in containers; none of those containers may be left afterwards.
#
# A Docker engine that is not running is started (as root: Debian's docker.io is installed
# when missing) and stopped again at the end. Without an engine and without root, the
# script says so and stops with success, unless CI=true or HEALTHPROBE_REQUIRE_DOCKER=1.
# Compose: `docker compose` when the client has it, else Debian's docker-compose (1.29).
#
# Knobs: HEALTHPROBE_CONTAINER_TESTS ("worker process telemetry"; "all" for every test
# binary), HEALTHPROBE_COMPOSE_PROJECT (healthprobe-check). Logs under target/containers/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "containers: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

PROJECT="${HEALTHPROBE_COMPOSE_PROJECT:-healthprobe-check}"
SERVICE_IMAGE=healthprobe:local
STATUS_URL=http://127.0.0.1:8097/status
SERVICE_UID=10001
# Bounds of the waits below: the worker needs Postgres healthy and its migrations run; the
# fleet flaps every 8 s and the worker needs 2 failed probes 2 s apart to report one.
STATUS_WAIT_SECS=180
EVENTS_WAIT_SECS=180
ENGINE_WAIT_SECS=60
REAPER_WAIT_SECS=60
TESTS="${HEALTHPROBE_CONTAINER_TESTS:-worker process telemetry}"
WORK="$ROOT/target/containers"
mkdir -p "$WORK"

declare -A took=()
phase_start=0
phase() { phase_start=$(date +%s); log "== $*"; }
phase_end() { took[$1]=$(( $(date +%s) - phase_start )); log "   $1 took ${took[$1]}s"; }

no_engine() {
    if [[ "${CI:-}" == true || "${HEALTHPROBE_REQUIRE_DOCKER:-}" == 1 ]]; then
        die "$*"
    fi
    log "SKIPPED: $* (set HEALTHPROBE_REQUIRE_DOCKER=1 to make this a failure)"
    exit 0
}

# ---- the engine -------------------------------------------------------------------------
STARTED_DOCKERD=""
stop_own_dockerd() {
    [[ -n "$STARTED_DOCKERD" ]] || return 0
    log "stopping the Docker engine started here (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || return 0; sleep 1; done
    log "the Docker engine (pid $STARTED_DOCKERD) did not stop within 30 s"
}

ensure_engine() {
    docker info >/dev/null 2>&1 && return 0
    [[ $(id -u) -eq 0 ]] || no_engine "no Docker engine answers and only root can start one"
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v dockerd >/dev/null; then
        log "installing Debian's docker.io"
        # Three tries, 15 s apart, refreshing the package lists before the later ones: a
        # mirror that fails for a moment once failed a whole CI run here. On failure apt's
        # last lines go to stderr, since a CI machine's log file is gone with the machine.
        local attempt installed=0
        for attempt in 1 2 3; do
            if { [[ $attempt -eq 1 ]] || apt-get update -qq; } && apt-get install -y -qq docker.io; then
                installed=1; break
            fi
            [[ $attempt -lt 3 ]] && { log "apt-get install docker.io failed (try $attempt of 3); again in 15 s"; sleep 15; }
        done >>"$WORK/apt-docker.log" 2>&1
        if [[ $installed -eq 0 ]]; then
            tail -25 "$WORK/apt-docker.log" | sed 's/^/containers: apt: /' >&2
            no_engine "docker.io could not be installed (apt's last lines above; all of it in $WORK/apt-docker.log)"
        fi
    fi
    log "starting a Docker engine (log $WORK/dockerd.log)"
    setsid dockerd >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq "$ENGINE_WAIT_SECS"); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$WORK/dockerd.log" >&2 || true
    STARTED_DOCKERD_FAILED=$STARTED_DOCKERD
    stop_own_dockerd
    no_engine "the Docker engine did not start within ${ENGINE_WAIT_SECS}s (pid $STARTED_DOCKERD_FAILED, log above)"
}

compose_cmd() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        if ! command -v docker-compose >/dev/null; then
            [[ $(id -u) -eq 0 ]] || die "neither \`docker compose\` nor docker-compose is installed"
            log "installing Debian's docker-compose"
            { apt-get install -y -qq docker-compose || { apt-get update -qq && apt-get install -y -qq docker-compose; }; } \
                >"$WORK/apt-compose.log" 2>&1 || die "docker-compose could not be installed (see $WORK/apt-compose.log)"
        fi
        COMPOSE=(docker-compose)
    fi
    COMPOSE+=(-p "$PROJECT" -f docker-compose.yml)
    log "compose: ${COMPOSE[0]}$([[ ${COMPOSE[1]} == compose ]] && echo ' compose') $("${COMPOSE[@]}" version --short 2>/dev/null || true)"
}

# ---- compose -----------------------------------------------------------------------------
COMPOSE_UP=0
TESTS_STARTED=0
compose_down() {
    (( COMPOSE_UP )) || return 0
    COMPOSE_UP=0
    "${COMPOSE[@]}" down -v --remove-orphans >"$WORK/compose-down.log" 2>&1 \
        || { cat "$WORK/compose-down.log" >&2; return 1; }
}

on_exit() {
    local rc=$?
    trap - EXIT
    if (( COMPOSE_UP )); then
        log "compose logs (last lines of each service) follow"
        "${COMPOSE[@]}" logs --no-color --tail 30 >&2 2>&1 || true
        compose_down || true
    fi
    # Containers of a test run interrupted here (the tests' own removal runs when they end;
    # only when this script ran tests, so other runs on a shared engine are left alone).
    if (( TESTS_STARTED )); then
        docker ps -aq --filter label=org.healthprobe.tests 2>/dev/null | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    fi
    stop_own_dockerd
    exit "$rc"
}
trap on_exit EXIT

ensure_engine
compose_cmd

phase "base images"
scripts/images.sh
phase_end images

phase "building $SERVICE_IMAGE from the Dockerfile (log $WORK/build.log)"
DOCKER_BUILDKIT=0 docker build --force-rm --label org.healthprobe.image=service -t "$SERVICE_IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; die "docker build failed"; }
image_size="$(docker image inspect --format '{{.Size}}' "$SERVICE_IMAGE")"
log "   $SERVICE_IMAGE: $(( image_size / 1000000 )) MB ($image_size bytes)"
phase_end build

phase "docker compose up (project $PROJECT)"
capture="$WORK/compose-run.txt"
: >"$capture"
COMPOSE_UP=1
"${COMPOSE[@]}" up -d --no-build >"$WORK/compose-up.log" 2>&1 \
    || { cat "$WORK/compose-up.log" >&2; die "compose up failed"; }
status_code=""
deadline=$(( $(date +%s) + STATUS_WAIT_SECS ))
while (( $(date +%s) < deadline )); do
    status_code="$(curl -s -o "$WORK/status.json" -w '%{http_code}' --max-time 5 "$STATUS_URL" || true)"
    [[ "$status_code" == 200 ]] && break
    sleep 2
done
[[ "$status_code" == 200 ]] || die "$STATUS_URL did not answer 200 (OK) within ${STATUS_WAIT_SECS}s (last: ${status_code:-no answer}: $(head -c 300 "$WORK/status.json" 2>/dev/null))"
{
    echo "\$ ${COMPOSE[*]} ps"
    "${COMPOSE[@]}" ps
    echo
    echo "\$ curl -s '$STATUS_URL?short=true'"
    curl -s --max-time 5 "$STATUS_URL?short=true"; echo
    echo "\$ curl -s -o /dev/null -w '%{http_code}' $STATUS_URL"
    curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$STATUS_URL"; echo
} >>"$capture" 2>&1
log "   /status answers 200 OK"

seen_failed=0; seen_recovered=0
deadline=$(( $(date +%s) + EVENTS_WAIT_SECS ))
while (( $(date +%s) < deadline )); do
    "${COMPOSE[@]}" logs --no-color events >"$WORK/events.log" 2>&1 || true
    grep -q '"event_type":"probe_failed"' "$WORK/events.log" && seen_failed=1
    grep -q '"event_type":"probe_recovered"' "$WORK/events.log" && seen_recovered=1
    (( seen_failed && seen_recovered )) && break
    sleep 2
done
(( seen_failed && seen_recovered )) \
    || die "the events service printed probe_failed: $seen_failed, probe_recovered: $seen_recovered within ${EVENTS_WAIT_SECS}s (see $WORK/events.log)"
{
    echo
    echo "\$ ${COMPOSE[*]} logs events   (first probe_failed and probe_recovered lines)"
    grep -m 3 '"event_type":"probe_failed"' "$WORK/events.log"
    grep -m 2 '"event_type":"probe_recovered"' "$WORK/events.log"
} >>"$capture"
log "   events printed probe_failed and probe_recovered"

for service in healthprobe fleet events; do
    id="$("${COMPOSE[@]}" ps -q "$service")"
    [[ -n "$id" ]] || die "service $service has no container"
    uids="$(docker exec "$id" sh -c 'grep ^Uid: /proc/1/status')" || die "cannot read the uid of $service's process"
    read -r _ real effective _ <<<"$uids"
    [[ "$real" == "$SERVICE_UID" && "$effective" == "$SERVICE_UID" ]] \
        || die "$service runs as uid $real/$effective, not $SERVICE_UID"
    echo "$service: pid 1 $uids" >>"$capture"
done
log "   healthprobe, fleet and events run as uid $SERVICE_UID"

# What down -v must remove: the project's containers, networks and volumes (named, and the
# anonymous ones its containers mount, such as Postgres's data).
mapfile -t containers < <(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
mapfile -t volumes < <(docker inspect --format '{{range .Mounts}}{{if .Name}}{{println .Name}}{{end}}{{end}}' "${containers[@]}" | sed '/^$/d' | sort -u)
compose_down || die "compose down -v failed"
left=()
for c in "${containers[@]}"; do docker container inspect "$c" >/dev/null 2>&1 && left+=("container $c"); done
for v in "${volumes[@]}"; do docker volume inspect "$v" >/dev/null 2>&1 && left+=("volume $v"); done
while read -r n; do [[ -n "$n" ]] && left+=("network $n"); done < <(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
while read -r v; do [[ -n "$v" ]] && left+=("volume $v"); done < <(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
(( ${#left[@]} == 0 )) || die "compose down -v left: ${left[*]}"
echo "down -v: ${#containers[@]} containers and ${#volumes[@]} volumes removed, no network left" >>"$capture"
log "   down -v removed ${#containers[@]} containers and ${#volumes[@]} volumes, no network left"
phase_end compose
sed 's/^/containers:   | /' "$capture" >&2

phase "testcontainers: cargo test with HEALTHPROBE_TEST_* unset ($TESTS)"
test_args=()
if [[ "$TESTS" == all ]]; then
    test_args=(--tests)
else
    for t in $TESTS; do test_args+=(--test "$t"); done
fi
if [[ -z "${HEALTHPROBE_NATS_SERVER_BIN:-}" ]]; then
    HEALTHPROBE_NATS_SERVER_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
    export HEALTHPROBE_NATS_SERVER_BIN
fi
TESTS_STARTED=1
env -u HEALTHPROBE_TEST_DATABASE_URL -u HEALTHPROBE_TEST_NATS_URL \
    cargo test --locked "${test_args[@]}" 2>&1 | tee "$WORK/testcontainers.log"
rc=${PIPESTATUS[0]}
(( rc == 0 )) || die "the testcontainers run failed (exit $rc; log $WORK/testcontainers.log)"
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$WORK/testcontainers.log" | awk '{s += $4} END {print s + 0}')
# The tests remove their containers when each test process ends (tests/helpers/mod.rs).
deadline=$(( $(date +%s) + REAPER_WAIT_SECS ))
while [[ -n "$(docker ps -aq --filter label=org.healthprobe.tests)" ]] && (( $(date +%s) < deadline )); do sleep 1; done
leftover="$(docker ps -aq --filter label=org.healthprobe.tests | tr '\n' ' ')"
[[ -z "$leftover" ]] || die "containers of the test run were left: $leftover"
phase_end testcontainers
log "   $passed tests passed against containers; all their containers are removed"

log "passed: images ${took[images]}s, image build ${took[build]}s ($(( image_size / 1000000 )) MB), compose ${took[compose]}s, testcontainers ${took[testcontainers]}s ($passed tests)"
