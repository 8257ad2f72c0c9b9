#!/usr/bin/env bash
# The anchor, twice in one run: automerge-repo as shipped (its DocSynchronizer throttles sync to one round per
# 100 ms, `syncDebounceRate`), and the same packages with that field set to 0, in a temporary copy (the installed
# packages are never changed). The second is its engine's speed; the first is what its users get by default.
#
#   bench/anchor/run.sh            (needs Node.js and npm; runs `npm install` here first)
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --loglevel=error >/dev/null
echo "== anchor as shipped (syncDebounceRate 100 ms)"
node anchor.mjs
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
cp -r anchor.mjs package.json node_modules "$copy/"
sync="$copy/node_modules/@automerge/automerge-repo/dist/synchronizer/DocSynchronizer.js"
grep -q "syncDebounceRate = 100;" "$sync" || { echo "DocSynchronizer.js changed: no 'syncDebounceRate = 100;'" >&2; exit 1; }
sed -i 's/syncDebounceRate = 100;/syncDebounceRate = 0;/' "$sync"
echo "== anchor unthrottled (syncDebounceRate 0, in a temporary copy)"
(cd "$copy" && node anchor.mjs)
