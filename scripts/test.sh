#!/usr/bin/env bash
# Installs mongod if missing, then runs every test (unit, CLI, and real-MongoDB integration).
# Extra arguments go to `cargo test`, e.g. `./scripts/test.sh --test check`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MONGOD="$(./scripts/install-mongod.sh | tail -n1)"
export MONGOD
echo "test.sh: using $("$MONGOD" --version | head -n1) at $MONGOD" >&2
cargo test --release "$@"
