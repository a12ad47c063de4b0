#!/usr/bin/env bash
# Build the cds_service container image with no container registry:
#
#   1. a Debian bookworm base image made from Debian's packages: mmdebstrap (minbase + python3,
#      python3-venv, ca-certificates; no manuals, no translations) piped into `podman import`;
#   2. the project's wheel and every dependency's wheel, made by the host's pip (its index, its
#      certificates, its cache) into build/wheels/;
#   3. `podman build --isolation=chroot` of deployment/Containerfile, which installs from those
#      wheels only (no network inside the build).
#
#   bash deployment/build-image.sh [--fresh-base]
#
# The base image is reused when it exists, unless --fresh-base (CI always makes it afresh).
# Environment: PYTHON (default .venv/bin/python) runs pip; IMAGE (default
# localhost/cds-service:<version from pyproject.toml>); BASE_IMAGE (localhost/cds-service-base:bookworm).
# Needs root, podman and mmdebstrap (apt-get install podman mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image="${IMAGE:-localhost/cds-service:$version}"
base="${BASE_IMAGE:-localhost/cds-service-base:bookworm}"
python="${PYTHON:-.venv/bin/python}"
fresh_base=false
[[ "${1:-}" == "--fresh-base" ]] && fresh_base=true

step() { printf '%s build-image: %s\n' "$(date +%T)" "$*"; }
for tool in podman mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done

# The ID of an image, or nothing.
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# Remove an image we replaced, if nothing else names it now.
drop_if_untagged() {
    [[ -n "$1" ]] || return 0
    if [[ -z "$(podman image inspect --format '{{.RepoTags}}' "$1" 2>/dev/null | tr -d '[]')" ]]; then
        podman rmi --force "$1" >/dev/null 2>&1 || true
    fi
}

if $fresh_base || [[ -z "$(image_id "$base")" ]]; then
    step "base image $base from Debian bookworm (mmdebstrap)"
    old=$(image_id "$base")
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        bookworm - | podman import --quiet --change 'CMD ["/usr/bin/python3"]' - "$base" >/dev/null
    drop_if_untagged "$old"
fi

step "wheels (the project's and its dependencies') into build/wheels/"
rm -rf build/wheels build/lib build/bdist.*   # a stale build/lib would leak into the wheel
"$python" -m pip wheel --quiet --wheel-dir build/wheels ".[postgresql]" 2> >(grep -v "^WARNING: Location" >&2)
ls build/wheels/cds_service-"$version"-*.whl >/dev/null

step "podman build $image"
old=$(image_id "$image")
if ! podman build --isolation=chroot --format docker --layers=false \
    --build-arg "BASE_IMAGE=$base" -f deployment/Containerfile -t "$image" . >build/image-build.log 2>&1; then
    tail -40 build/image-build.log >&2
    echo "build-image: podman build failed (whole log: build/image-build.log)" >&2
    exit 1
fi
drop_if_untagged "$old"
step "built $image ($(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
