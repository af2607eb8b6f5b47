#!/usr/bin/env bash
# Runs a reference generator with the pinned Python stack.
#
#   tools/reference/run.sh make_scheduler_fixtures.py [args...]
#
# Creates tools/reference/.venv from requirements.txt when it is missing (torch comes from
# PyPI; set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL to use a CPU-only wheel index), then runs the
# given script (a path relative to this folder, or any path) with that interpreter.
# CI never runs this: the fixtures the scripts write are committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [[ $# -lt 1 ]]; then
    echo "usage: $0 SCRIPT.py [args...]" >&2
    exit 2
fi
script="$1"
shift
if [[ ! -f "$script" && -f "$here/$script" ]]; then
    script="$here/$script"
fi
if [[ ! -f "$script" ]]; then
    echo "$0: no such script: $script" >&2
    exit 2
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv (pinned versions from requirements.txt)" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip >&2
    "$venv/bin/python" -m pip install -r "$here/requirements.txt" >&2
fi

# Refuse to run with a drifted environment: the fixtures must come from the pinned stack.
"$venv/bin/python" - "$here/requirements.txt" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = "missing"
    # torch wheels carry a local tag (+cpu, +cu121): compare the public version only.
    if have.split("+", 1)[0] != want:
        bad.append(f"{name}: want {want}, have {have}")
if bad:
    sys.exit("tools/reference/.venv does not match requirements.txt:\n  " + "\n  ".join(bad)
             + "\nremove tools/reference/.venv and rerun to rebuild it")
PY

exec "$venv/bin/python" "$script" "$@"
