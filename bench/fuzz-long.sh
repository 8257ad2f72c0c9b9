#!/usr/bin/env bash
# The long run of the decoder fuzz stories: every story for POPMESH_FUZZ_SECS seconds (default 600), in release,
# one at a time, then the summary lines for BENCHMARKS.md:
#   fuzz <decoder>: <cases> cases in <secs> s, 0 failures
# A failure stops the run with the decoder, the round and the smallest failing input proptest found; keep that
# input as a named case beside its story. POPMESH_FUZZ_SEED=K starts the rounds at K instead of 0, so a later run
# explores other inputs.
#
#   bench/fuzz-long.sh                      # 600 s a decoder
#   POPMESH_FUZZ_SECS=30 bench/fuzz-long.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export POPMESH_FUZZ_SECS="${POPMESH_FUZZ_SECS:-600}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

for story in \
    "popmesh-crdt decoder_fuzz" \
    "popmesh-crdt reconciliation_fuzz" \
    "popmesh-transport decoder_fuzz" \
    "popmesh-transport hello_fuzz" \
    "popmesh-node config_fuzz"; do
    set -- $story
    echo "== $1 --test $2 ($POPMESH_FUZZ_SECS s a decoder)"
    cargo test --release -p "$1" --test "$2" -- --nocapture --test-threads=1 2>&1 | tee -a "$log"
done

echo
echo "== summary"
grep -o 'fuzz [a-z_]*: [0-9]* cases in [0-9]* s, 0 failures' "$log"
