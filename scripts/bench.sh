#!/usr/bin/env bash
# Throughput benchmark of cutover (issues 3, 4, 5, 10). Not a test: it measures and prints.
#
#   ./scripts/bench.sh                 # 1,000,000 documents of ~1 KB (takes a while)
#   ./scripts/bench.sh --quick         # 100,000 documents, smaller backlog: a smoke run
#   ./scripts/bench.sh --docs 500000   # any size
#   ./scripts/bench.sh --no-rss-check  # skip the sync of 2x the documents (RSS flatness)
#   ./scripts/bench.sh --copy-under-churn --docs 500000 --churn-rate 2000
#                                      # the copy under churn: change events applied during it
#                                      # vs copy-then-apply, interleaved rounds (issue 20)
#   ./scripts/bench.sh --collections 2000 [--per-coll 200] [--rounds 3]
#                                      # breadth: N collections × 200 docs × 2 indexes against
#                                      # the breadth ceiling, the window with N vs 5 collections,
#                                      # verify and peak RSS (issue 24)
#   ./scripts/bench.sh --cutover-arg --copy-concurrency --cutover-arg 4   # tune `cutover run`
#
# Other flags: --rounds N (3 interleaved rounds of backlogs: bulk insert, bulk update, bulk
# delete, single-document mixed; medians are quoted), --backlog N (change events per backlog,
# default 200000), --churn-secs S (30), --churn-rate W (5000 writes/s), --commits K (5
# migrations for the write-blocked window), --streams N (8 concurrent insert streams for the
# ingest ceiling), --cache-gb G (1). See benches/throughput/main.rs for what each phase measures.
#
# The summary is printed and written to target/bench-summary.txt. Start fresh local
# single-node replica sets (127.0.0.1 only); they are removed when the run ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MONGOD="$(./scripts/install-mongod.sh | tail -n1)"
export MONGOD
echo "bench.sh: $("$MONGOD" --version | head -n1) at $MONGOD" >&2
cargo build --release --bin cutover
cargo bench --bench throughput -- --cutover "$PWD/target/release/cutover" "$@"
