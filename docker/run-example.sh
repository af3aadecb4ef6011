#!/usr/bin/env bash
# Runs the image's `tutti run` on the bundled example (examples/tasks.jsonl: 24 tasks, on the
# simulated config configs/toolorchestra-sim.toml) and checks that the output Parquet has 24 rows.
#
#   docker/run-example.sh [--via podman|podman-workarounds|chroot]
#
# Without --via it tries, in order, and says which one ran:
#   podman               `podman run` as it is.
#   podman-workarounds   `podman run` with the two things a machine like this one lacks worked
#                        around: rlimits no higher than the host's hard limits (the runtime may not
#                        raise them: no CAP_SYS_RESOURCE), and, where cgroups are mounted in hybrid
#                        mode (v1 controllers plus a cgroup2 at /sys/fs/cgroup/unified, which crun
#                        refuses), that cgroup2 mount hidden in a private mount namespace. Nothing
#                        global is changed.
#   chroot               the image's filesystem exported (`podman create` + `podman export`), then
#                        its entrypoint run as its user, in its working directory and environment,
#                        under `unshare --mount --pid --fork` + `chroot`.
# Environment: IMAGE (default localhost/tutti:latest), PODMAN_OPTS (as for build.sh), KEEP_ROOTFS
# (set: keep the exported filesystem, docker/.build/example/rootfs, after a chroot run).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${IMAGE:-localhost/tutti:latest}
EXPECTED_ROWS=24
read -r -a podman_opts <<<"${PODMAN_OPTS:-}"
podman() { command podman "${podman_opts[@]}" "$@"; }
say() { printf '== %s\n' "$*" >&2; }

via=""
while [ $# -gt 0 ]; do
    case $1 in
        --via) via=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-example.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

podman image exists "$IMAGE" || { echo "run-example.sh: no image $IMAGE (run docker/build.sh)" >&2; exit 1; }

work=$here/.build/example
out=$work/out
# The arguments after the entrypoint (`tutti`): the bundled example on the simulated config.
args=(run /opt/tutti/examples/tasks.jsonl -o /out/results.parquet
      --config /opt/tutti/configs/toolorchestra-sim.toml)

fresh_out() {
    rm -rf "$out"
    mkdir -p "$out"
    chmod 0777 "$out" # the image runs as its own non-root user
}

# The three ways, called as "run_${way//-/_}".
# shellcheck disable=SC2329
run_podman() {
    podman run --rm --network=none -v "$out:/out" "$IMAGE" "${args[@]}"
}

# shellcheck disable=SC2329
run_podman_workarounds() {
    local nofile nproc
    nofile=$(ulimit -Hn)
    [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
    nproc=4096
    local cmd=(podman run --rm --network=none
               --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
               -v "$out:/out" "$IMAGE" "${args[@]}")
    # (cgroup files report size 0: read the controllers, do not test the size.)
    if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ] &&
        [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
        say "cgroups in hybrid mode: hiding /sys/fs/cgroup/unified in a private mount namespace"
        unshare --mount --propagation private \
            sh -c 'umount /sys/fs/cgroup/unified && exec "$@"' sh \
            podman "${podman_opts[@]}" "${cmd[@]:1}"
    else
        "${cmd[@]}"
    fi
}

# shellcheck disable=SC2329
run_chroot() {
    local root=$work/rootfs ctr
    say "exporting $IMAGE's filesystem to $root"
    rm -rf "$root"
    mkdir -p "$root"
    ctr=$(podman create "$IMAGE")
    podman export "$ctr" | tar -x -C "$root"
    podman rm "$ctr" >/dev/null
    # What `podman run` would take from the image's config.
    local user workdir entrypoint env
    user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
    workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$IMAGE")
    mapfile -t entrypoint < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
    mapfile -t env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
    case $user in *:*) ;; "") user=0:0 ;; *) user=$user:$user ;; esac
    mkdir -p "$root/out" "$root/proc" "$root/dev" "$root/sys" "$root/tmp"
    say "unshare --mount --pid --fork chroot $root (user $user, cwd ${workdir:-/}): ${entrypoint[*]} ${args[*]}"
    # In new mount and PID namespaces (so nothing outlives the run and nothing is mounted on the
    # host): /proc for this PID namespace, the host's /dev and /sys, a fresh /tmp, and the output
    # folder; then the entrypoint as the image's user.
    # shellcheck disable=SC2016
    unshare --mount --pid --fork --propagation private sh -c '
        root=$1 out=$2 user=$3 workdir=$4; shift 4
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
        mount --bind "$out" "$root/out"
        exec chroot --userspec="$user" "$root" /usr/bin/env -i "$@"
    ' sh "$root" "$out" "$user" "${workdir:-/}" \
        "${env[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "${workdir:-/}" "${entrypoint[@]}" "${args[@]}"
    local status=$?
    [ -n "${KEEP_ROOTFS:-}" ] || rm -rf "$root"
    return "$status"
}

check_rows() {
    local n
    n=$(python3 "$here/parquet-rows.py" "$out/results.parquet")
    if [ "$n" = "$EXPECTED_ROWS" ]; then
        say "OK: $out/results.parquet has $n rows (expected $EXPECTED_ROWS)"
    else
        say "FAIL: $out/results.parquet has $n rows, expected $EXPECTED_ROWS"
        return 1
    fi
}

mkdir -p "$work"
if [ -n "$via" ]; then
    ways=("$via")
else
    ways=(podman podman-workarounds chroot)
fi
for way in "${ways[@]}"; do
    fresh_out
    say "trying: $way"
    log=$work/$way.log
    case $way in
        podman|podman-workarounds|chroot) ;;
        *) echo "run-example.sh: --via podman, podman-workarounds or chroot" >&2; exit 2 ;;
    esac
    set +e
    "run_${way//-/_}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # tutti exits 0, or with its own status when tasks failed; either way the rows are written.
    if [ -f "$out/results.parquet" ]; then
        say "ran via: $way (exit status $status)"
        check_rows
        exit
    fi
    say "$way did not run the image (exit status $status; log $log)"
done
say "FAIL: no way of running the image worked"
exit 1
