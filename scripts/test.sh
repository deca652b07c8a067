#!/usr/bin/env bash
# Installs mongod (and libfaketime, chromium) if missing, then runs every test (unit, CLI, and real-MongoDB integration).
# Extra arguments go to `cargo test --release --features test-hooks`, e.g. `./scripts/test.sh --test it check::`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MONGOD="$(./scripts/install-mongod.sh | tail -n1)"
export MONGOD
# tests/it/lease.rs moves one runner's clock with libfaketime (Debian package `libfaketime`).
if ! ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "test.sh: installing libfaketime (Debian) for tests/it/lease.rs" >&2
    (apt-get install -y -q libfaketime >/dev/null 2>&1 ||
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libfaketime >/dev/null 2>&1)) ||
      echo "test.sh: could not install libfaketime; tests/it/lease.rs will fail" >&2
  else
    echo "test.sh: libfaketime is missing (apt-get install libfaketime); tests/it/lease.rs will fail" >&2
  fi
fi
# tests/it/page.rs drives the progress page in headless Chromium (Debian package `chromium`).
if [[ -z "${CHROME:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "test.sh: installing chromium (Debian) for tests/it/page.rs" >&2
    (apt-get install -y -q chromium >/dev/null 2>&1 ||
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ||
      echo "test.sh: could not install chromium; tests/it/page.rs will fail" >&2
  else
    echo "test.sh: chromium is missing (apt-get install chromium, or set CHROME); tests/it/page.rs will fail" >&2
  fi
fi
echo "test.sh: using $("$MONGOD" --version | head -n1) at $MONGOD" >&2
# `test-hooks`: the crash and pause points the tests use (never in a release build).
cargo test --release --features test-hooks "$@"
