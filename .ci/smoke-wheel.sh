#!/usr/bin/env bash
# The project as a user installs it: build the wheel, install it (not editable) with its
# dependencies into a fresh virtual environment, then, from a directory outside the repository,
# run check-mappings, evaluate on every tests/data/synthea patient, and serve (start it, GET
# /cds-services, stop it with SIGTERM).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/cds-wheel-smoke.XXXXXX)
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }

# setuptools builds in build/ of the tree: a stale build/lib would put deleted files in the wheel.
rm -rf "$repo/build/lib" "$repo"/build/bdist.*
quiet_pip "$repo/.venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv "$work/venv"
quiet_pip "$work/venv/bin/pip" install --quiet "$work"/dist/cds_service-*.whl
cli="$work/venv/bin/cds-service"

mkdir "$work/elsewhere" && cd "$work/elsewhere"
"$cli" check-mappings
for patient in "$repo"/tests/data/synthea/*.json; do
    "$cli" evaluate "$patient" --as-of 2026-06-01 >"$work/report.txt"   # not into grep -q: it may close the pipe early
    grep -q "^NCT06888960  " "$work/report.txt" \
        || { echo "smoke-wheel: evaluate $patient printed no NCT06888960 line" >&2; exit 1; }
done
echo "smoke-wheel: evaluate: $(ls "$repo"/tests/data/synthea/*.json | wc -l) patients"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$cli" serve --port "$port" >"$work/serve.log" 2>&1 &
server=$!
python3 - "$port" <<'EOF'
import json, sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cds-services", timeout=5) as r:
            ids = [s["id"] for s in json.load(r)["services"]]
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("smoke-wheel: serve did not answer GET /cds-services within 60 s")
        time.sleep(0.3)
assert "trial-eligibility" in ids, ids
print("smoke-wheel: serve: GET /cds-services lists", ids)
EOF
kill -TERM "$server"
wait "$server" || true   # uvicorn re-raises SIGTERM after its graceful shutdown
server=""
grep -q "Finished server process" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
if grep -q Traceback "$work/serve.log"; then cat "$work/serve.log" >&2; exit 1; fi
[[ -f cds-feedback.sqlite3 ]] || { echo "smoke-wheel: serve made no database in its working directory" >&2; exit 1; }
echo "smoke-wheel: the installed wheel works from $work/elsewhere"
