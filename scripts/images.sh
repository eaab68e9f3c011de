#!/usr/bin/env bash
# Makes sure the base images that the Dockerfile, docker-compose.yml and the testcontainers
# tests name are present. Each one that is neither present nor pullable (no container
# registry reachable, as on this project's machines) is replaced by a local stand-in built
# from Debian 12's packages, under the exact same name:
#
#   debian:bookworm-slim      debootstrap --variant=minbase bookworm, trimmed as the slim one
#   rust:1.94-slim-bookworm   the above + gcc, libc6-dev and this machine's Rust toolchain
#   postgres:15-bookworm      the above + Debian's postgresql-15 and an entrypoint with the
#                             official image's contract (deploy/stand-ins/postgres)
#   nats:2.10                 the above + Debian's nats-server (2.9.x) as the entrypoint
#
# On a machine that reaches a registry nothing is stood in. Every stand-in carries the label
# org.healthprobe.stand-in (and .contents: what is really inside); a stand-in built from an
# older recipe is rebuilt. `scripts/images.sh list` prints the stand-ins present.
# Needs a running Docker engine; debootstrap is installed when missing (as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "images: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The names used by the project's files (checked against them below, so they cannot drift).
DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.94-slim-bookworm
POSTGRES_IMAGE=postgres:15-bookworm
NATS_IMAGE=nats:2.10
# A failed pull answers at once when no registry is reachable; a hanging one is cut here.
PULL_TIMEOUT_SECS=${HEALTHPROBE_PULL_TIMEOUT_SECS:-30}
WORK="${HEALTHPROBE_IMAGES_WORK:-$ROOT/target/images}"

# The recipe: the stand-ins' files and this version, to be raised with any change to how
# this script builds them (build_debian, build_rust). A stand-in built from another recipe is
# rebuilt, so a fix reaches machines that already have stand-ins.
STAND_IN_VERSION=1
recipe() { { echo "$STAND_IN_VERSION"; cat deploy/stand-ins/*/*; } | sha256sum | cut -c1-16; }
RECIPE="$(recipe)"

if [[ "${1:-}" == list ]]; then
    docker image ls --filter label=org.healthprobe.stand-in \
        --format '{{.Repository}}:{{.Tag}}  {{.Size}}  {{.CreatedSince}}'
    exit 0
fi

check_names() {
    grep -qx "FROM $RUST_IMAGE AS builder" Dockerfile || die "Dockerfile's builder is not $RUST_IMAGE: update $0"
    grep -qx "FROM $DEBIAN_IMAGE AS runtime" Dockerfile || die "Dockerfile's runtime is not $DEBIAN_IMAGE: update $0"
    grep -qx "    image: $POSTGRES_IMAGE" docker-compose.yml || die "docker-compose.yml's postgres is not $POSTGRES_IMAGE: update $0"
    grep -qx "    image: $NATS_IMAGE" docker-compose.yml || die "docker-compose.yml's nats is not $NATS_IMAGE: update $0"
    grep -qF "\"${POSTGRES_IMAGE#*:}\"" tests/helpers/mod.rs || die "tests/helpers/mod.rs does not use $POSTGRES_IMAGE: update $0"
    grep -qF "\"${NATS_IMAGE#*:}\"" tests/helpers/mod.rs || die "tests/helpers/mod.rs does not use $NATS_IMAGE: update $0"
}

# 0: usable as it is (a real image, or a stand-in of this recipe); 1: must be built.
usable() {
    local name=$1 label
    if label="$(docker image inspect --format '{{index .Config.Labels "org.healthprobe.stand-in.recipe"}}' "$name" 2>/dev/null)"; then
        if [[ -z "$label" || "$label" == "<no value>" ]]; then
            log "$name: present (not a stand-in)"; return 0
        elif [[ "$label" == "$RECIPE" ]]; then
            log "$name: stand-in present"; return 0
        fi
        log "$name: stand-in from an older recipe, rebuilding"; return 1
    fi
    if timeout "$PULL_TIMEOUT_SECS" docker pull -q "$name" >/dev/null 2>"$WORK/pull.log"; then
        log "$name: pulled"; return 0
    fi
    log "$name: not present and not pullable ($(head -c 200 "$WORK/pull.log" | tr '\n' ' ')): building a stand-in"
    return 1
}

labels() {
    printf -- '--label\norg.healthprobe.stand-in=%s\n--label\norg.healthprobe.stand-in.recipe=%s\n--label\norg.healthprobe.stand-in.contents=%s\n' \
        "$1" "$RECIPE" "$2"
}

build_debian() {
    local root="$WORK/debian-root"
    if ! command -v debootstrap >/dev/null; then
        [[ $(id -u) -eq 0 ]] || die "debootstrap is missing (apt-get install debootstrap, as root)"
        log "installing debootstrap"
        { apt-get install -y -qq debootstrap || { apt-get update -qq && apt-get install -y -qq debootstrap; }; } \
            >"$WORK/apt.log" 2>&1 || die "could not install debootstrap (see $WORK/apt.log)"
    fi
    rm -rf "$root"
    log "debootstrap --variant=minbase bookworm (a few minutes; log $WORK/debootstrap.log)"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    # As the official slim image: updates and security sources, no documentation, manuals
    # or translations (also for packages installed later), no package lists or caches.
    cat >"$root/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    # apt as in the official images: no package caches kept, no translations, so
    # `rm -rf /var/lib/apt/lists/*` after an install leaves nothing behind in a layer.
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/{man,info,lintian,linda,groff}/* "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    tar -C "$root" --numeric-owner -c . | docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL org.healthprobe.stand-in=$DEBIAN_IMAGE" \
        --change "LABEL org.healthprobe.stand-in.recipe=$RECIPE" \
        --change "LABEL org.healthprobe.stand-in.contents=\"debootstrap --variant=minbase bookworm\"" \
        - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$root"
}

build_rust() {
    local ctx="$WORK/rust-ctx" toolchain version
    toolchain="$(rustc --print sysroot)" || die "no Rust toolchain on this machine to put in the builder stand-in"
    version="$(rustc --version)"
    rm -rf "$ctx"; mkdir -p "$ctx/toolchain" "$ctx/ca"
    cp deploy/stand-ins/rust/Dockerfile "$ctx/"
    # The toolchain without its HTML documentation (most of its size).
    cp -a "$toolchain"/{bin,lib,libexec,etc} "$ctx/toolchain/" 2>/dev/null || cp -a "$toolchain"/{bin,lib} "$ctx/toolchain/"
    if [[ -d "$toolchain/share" ]]; then
        mkdir -p "$ctx/toolchain/share"
        find "$toolchain/share" -mindepth 1 -maxdepth 1 ! -name doc -exec cp -a {} "$ctx/toolchain/share/" \;
    fi
    cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
    mapfile -t lbl < <(labels "$RUST_IMAGE" "$version, this machine's toolchain ($toolchain), on the $DEBIAN_IMAGE above")
    DOCKER_BUILDKIT=0 docker build --force-rm -q "${lbl[@]}" -t "$RUST_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
}

build_service() { # name, recipe dir, what is inside
    mapfile -t lbl < <(labels "$1" "$3")
    DOCKER_BUILDKIT=0 docker build --force-rm -q "${lbl[@]}" -t "$1" "deploy/stand-ins/$2" >/dev/null
}

# Runs a build function for an image name, then removes the stand-in it replaced when nothing
# uses that any more (a real image it replaced is left alone).
rebuild() { # name, build function and its arguments
    local name=$1 old
    shift
    old="$(docker image inspect --format '{{.Id}} {{index .Config.Labels "org.healthprobe.stand-in"}}' "$name" 2>/dev/null || true)"
    "$@"
    built+=("$name")
    if [[ "$old" == *" $name" && "${old%% *}" != "$(docker image inspect --format '{{.Id}}' "$name")" ]]; then
        docker image rm "${old%% *}" >/dev/null 2>&1 || log "$name: the replaced stand-in ${old:7:12} is still in use; left"
    fi
}

docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/containers-check.sh starts one)"
check_names
mkdir -p "$WORK"
built=()
start=$(date +%s)
# debian first: the others are built on it (a fresh debian stand-in means they are rebuilt).
if ! usable "$DEBIAN_IMAGE"; then rebuild "$DEBIAN_IMAGE" build_debian; fi
debian_fresh=${#built[@]}
if (( debian_fresh )) || ! usable "$RUST_IMAGE"; then rebuild "$RUST_IMAGE" build_rust; fi
if (( debian_fresh )) || ! usable "$POSTGRES_IMAGE"; then
    rebuild "$POSTGRES_IMAGE" build_service "$POSTGRES_IMAGE" postgres "Debian 12 postgresql-15, official image's entrypoint contract"
fi
if (( debian_fresh )) || ! usable "$NATS_IMAGE"; then
    rebuild "$NATS_IMAGE" build_service "$NATS_IMAGE" nats "Debian 12 nats-server (2.9.x)"
fi
for image in "${built[@]}"; do
    log "built stand-in $image: $(docker image inspect --format '{{index .Config.Labels "org.healthprobe.stand-in.contents"}}' "$image")"
done
if (( ${#built[@]} )); then
    log "inside: $(docker run --rm "$RUST_IMAGE" rustc --version); nats-server $(docker run --rm "$NATS_IMAGE" --version 2>&1 | tr -d '\n'); $(docker run --rm --entrypoint postgres "$POSTGRES_IMAGE" --version)"
fi
log "done in $(( $(date +%s) - start ))s (${#built[@]} stand-in(s) built)"
