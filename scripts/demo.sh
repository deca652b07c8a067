#!/usr/bin/env bash
# The demo: two local replica sets, sample data, an application writing throughout, and
# the example reversible plan run end to end (check, then run, then status).
# Installs mongod (and, for the demo's seeding/app client only, pymongo in .tmp/venv) if
# missing. Everything runs on 127.0.0.1 and is removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MONGOD="$(./scripts/install-mongod.sh | tail -n1)"
export MONGOD
echo "demo: building cutover (release) ..." >&2
cargo build --release --quiet
venv=.tmp/venv
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import pymongo" 2>/dev/null; then
  echo "demo: installing pymongo into $venv (the demo's sample app; cutover itself is Rust) ..." >&2
  mkdir -p .tmp
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pymongo
fi
exec "$venv/bin/python" scripts/demo.py "$@"
