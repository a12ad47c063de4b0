#!/usr/bin/env bash
# Smoke-test the built image without a container runtime (`podman run` cannot set up cgroups on the
# build machine). What a runtime would do, done by hand:
#
#   1. read the image's configuration (user, environment, entrypoint, command, working directory,
#      health check) with `podman image inspect` and check what the Containerfile promises;
#   2. mount the image's root file system (`podman image mount`);
#   3. in new mount, network and PID namespaces (`unshare`): bind the root file system READ-ONLY,
#      put tmpfs on /tmp and on the volume /var/lib/cds-service (owned by the image's user), mount
#      /proc and /dev, bring up loopback;
#   4. run the image's own entrypoint and command, as the image's user (`chroot --userspec`), with
#      the image's environment only (`env -i`), plus CDS_ALLOW_UNSIGNED=true so that an unsigned
#      demo call can be made (as `podman run -e` would add it);
#   5. ask it: discovery, a patient-view hook with the demo patient (one card), feedback (stored in
#      the volume's SQLite file); run the image's HEALTHCHECK command; run `check-mappings` and
#      `evaluate` inside the image; stop it with SIGTERM and require a clean exit.
#
#   bash deployment/smoke-image.sh [IMAGE]          (default localhost/cds-service:<version>)
#
# Needs root (mount, chroot), podman, util-linux, iproute2 and python3 on the host; .venv (for the
# demo request). The image's HEALTHCHECK (/healthz) must pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--inner" ]]; then
    # ---- inside the new namespaces: $2 image root, $3 work dir (config.json, request.json) ----
    mnt="$2" work="$3"
    root="$work/root"
    mkdir -p "$root"
    mount --bind "$mnt" "$root"
    mount -o remount,bind,ro "$root"                  # the root file system is read-only
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount -t tmpfs -o uid=10001,gid=10001,mode=0750 tmpfs "$root/var/lib/cds-service"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    ip link set lo up
    cp tests/data/synthea/*.json "$root/tmp/"
    exec python3 deployment/smoke_image_checks.py "$root" "$work"
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image="${1:-localhost/cds-service:$version}"
started=$(date +%s)

work=$(mktemp -d /tmp/cds-smoke.XXXXXX)
mnt=$(podman image mount "$image")
cleanup() {
    podman image unmount "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

podman image inspect "$image" >"$work/inspect.json"
.venv/bin/python -m cds_service.demo_request tests/data/demo/sle-likely-eligible.json >"$work/request.json"

unshare --mount --net --pid --fork --kill-child bash "$0" --inner "$mnt" "$work"
echo "smoke-image: $image passed in $(($(date +%s) - started)) s"
