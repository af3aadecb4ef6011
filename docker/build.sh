#!/usr/bin/env bash
# Builds the tutti image (docker/Dockerfile) with podman and no image registry.
#
#   docker/build.sh [--rev REV] [--rebuild-bases] [--jobs N]
#
#   --rev REV         build the committed tree REV (git archive) instead of the working tree
#   --rebuild-bases   make the two base images again even when they exist
#   --jobs N          cargo's --jobs in the build stage (default: all cores)
#
# Environment: IMAGE (default localhost/tutti:latest), SUITE (trixie), MIRROR
# (http://deb.debian.org/debian), SECURITY_MIRROR (http://deb.debian.org/debian-security),
# PODMAN_OPTS (global podman options, e.g. "--storage-driver=vfs" where overlay does not work).
#
# What it does, every step idempotent:
#  1. Base images from Debian packages: mmdebstrap makes a minbase root filesystem tarball and
#     `podman import` makes it an image, once for the build stage (toolchain, C compiler, OpenSSL
#     headers) and once for the runtime (ca-certificates, libssl3t64, python3). Each carries a
#     label with a hash of what went into it; it is made again only when that changes.
#  2. The build context, docker/.build/context: a snapshot of the source (the files git tracks or
#     would track, or `git archive REV`), the crates of Cargo.lock vendored by the host's cargo,
#     and a cargo config that points crates.io at them, so the in-image build is offline
#     (`cargo build --offline --locked`): no network is needed inside any container.
#  3. `podman build --isolation=chroot` of docker/Dockerfile on that context (chroot isolation
#     needs no cgroup or namespace setup from the runtime, and works here where others may not).
#
# Toolchain choice: the workspace needs rustc >= 1.88. Debian bookworm has 1.63 (and nothing newer
# in bookworm-backports), trixie's `rustc` is 1.85; trixie-backports and sid have 1.97. But trixie
# itself (main, the stable release) carries `rustc-web`/`cargo-web`, the newer toolchain Debian
# keeps for Firefox and Chromium (1.96 in 13.x; they Provide rustc and cargo). So both stages are
# trixie: the build stage installs rustc-web, and the runtime is trixie too, the glibc and libssl
# the binary was linked against. The whole image is then Debian packages from the signed archive
# of a stable release; the alternatives (the host's rustup toolchain copied into the context or
# bind-mounted; backports or sid) would tie the image to this host, or take a toolchain with
# less support.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/.build
ctx=$work/context

IMAGE=${IMAGE:-localhost/tutti:latest}
SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
read -r -a podman_opts <<<"${PODMAN_OPTS:-}"
# The machine this runs on may be shared: every heavy step runs at the lowest priority.
NICE=(nice -n 19)

rev=""
rebuild_bases=0
jobs=$(nproc)
while [ $# -gt 0 ]; do
    case $1 in
        --rev) rev=$2; shift 2 ;;
        --rebuild-bases) rebuild_bases=1; shift ;;
        --jobs) jobs=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

BUILD_BASE=localhost/tutti-build-base:$SUITE
RUNTIME_BASE=localhost/tutti-runtime-base:$SUITE
# rustc-web/cargo-web: the toolchain (see above). gcc and libc6-dev: the C parts (mimalloc, zstd)
# and the linker. pkgconf and libssl-dev: openssl-sys, under reqwest's native-tls.
BUILD_PACKAGES="rustc-web,cargo-web,gcc,libc6-dev,pkgconf,libssl-dev"
# ca-certificates and libssl3t64: HTTPS to model servers. python3: the code sandbox's interpreter.
RUNTIME_PACKAGES="ca-certificates,libssl3t64,python3"

podman() { command podman "${podman_opts[@]}" "$@"; }
say() { printf '\n== %s\n' "$*" >&2; }

mkdir -p "$work"

# 1. Base images -------------------------------------------------------------------------------
make_base() {
    local image=$1 packages=$2 name=$3
    local stamp
    stamp=$(printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$packages" "v1" | sha256sum | cut -c1-16)
    if [ "$rebuild_bases" = 0 ] && podman image exists "$image" &&
        [ "$(podman image inspect --format '{{index .Labels "tutti.base"}}' "$image")" = "$stamp" ]; then
        say "$image is up to date ($stamp)"
        return
    fi
    local tar=$work/$name.tar
    say "mmdebstrap: $name ($SUITE, $packages)"
    rm -f "$tar"
    # minbase (Essential packages and apt) plus the packages, no Recommends, no documentation,
    # manual pages or translations (copyright files kept); apt lists are removed (the default).
    "${NICE[@]}" mmdebstrap --variant=minbase \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --include="$packages" \
        "$SUITE" "$tar" \
        "deb $MIRROR $SUITE main" \
        "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY_MIRROR $SUITE-security main"
    say "podman import $tar -> $image"
    podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL tutti.base=$stamp" \
        "$tar" "$image" >/dev/null
    rm -f "$tar"
}
make_base "$BUILD_BASE" "$BUILD_PACKAGES" build-base
make_base "$RUNTIME_BASE" "$RUNTIME_PACKAGES" runtime-base

# 2. Build context -----------------------------------------------------------------------------
say "build context: source snapshot (${rev:-working tree})"
rm -rf "$ctx/tutti"
mkdir -p "$ctx/tutti"
if [ -n "$rev" ]; then
    git -C "$repo" archive --format=tar "$rev" | tar -x -C "$ctx/tutti"
else
    # Tracked and untracked-but-not-ignored files that exist (a deleted tracked file is left out).
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [ -e "$repo/$f" ] || [ -L "$repo/$f" ]; then printf '%s\0' "$f"; fi
        done |
        tar -C "$repo" --null -T - -cf - | tar -x -C "$ctx/tutti"
fi
# docker/ is not part of what the image builds (and a change to it must not rebuild the binary).
rm -rf "$ctx/tutti/docker"

# Every crate of Cargo.lock, for the whole workspace (cargo resolves it whole even when building
# one package). --locked: the lock file is used as it is, never updated. Only when the lock file
# or a manifest changed: left alone, the folder stays byte-identical and podman's layer cache
# skips copying it into the image again.
vendor_stamp=$(cd "$ctx/tutti" && find . -name Cargo.toml -o -name Cargo.lock | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16)
if [ -d "$ctx/vendor" ] && [ "$(cat "$ctx/vendor.stamp" 2>/dev/null)" = "$vendor_stamp" ]; then
    say "build context: vendored crates up to date ($vendor_stamp)"
else
    say "build context: cargo vendor (host cargo: $(cargo --version))"
    rm -f "$ctx/vendor.stamp"
    (cd "$ctx/tutti" && "${NICE[@]}" cargo vendor --locked --versioned-dirs "$ctx/vendor" >/dev/null)
    echo "$vendor_stamp" >"$ctx/vendor.stamp"
fi
cat >"$ctx/cargo-config.toml" <<'EOF'
# Written by docker/build.sh: crates.io is the vendored copy in the image; nothing is fetched.
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/usr/src/vendor"

[net]
offline = true
EOF

# 3. The image ---------------------------------------------------------------------------------
revision=$(git -C "$repo" rev-parse "${rev:-HEAD}")
if [ -z "$rev" ] && [ -n "$(git -C "$repo" status --porcelain --untracked-files=normal -- . ':!docker')" ]; then
    revision="$revision-dirty"
fi
say "podman build $IMAGE (cargo --jobs $jobs)"
start=$(date +%s)
"${NICE[@]}" podman build --isolation=chroot \
    -f "$here/Dockerfile" \
    --build-arg "BUILD_BASE=$BUILD_BASE" \
    --build-arg "RUNTIME_BASE=$RUNTIME_BASE" \
    --build-arg "JOBS=$jobs" \
    --label "org.opencontainers.image.revision=$revision" \
    -t "$IMAGE" \
    "$ctx"
say "built in $(( $(date +%s) - start )) s"
podman image inspect --format 'image {{.Id}}  {{.Size}} bytes' "$IMAGE"
podman images --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$IMAGE"
