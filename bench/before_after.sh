#!/usr/bin/env bash
# Before/after of a change, same machine, same session: runs bench/submit.mjs
# and bench/embed.mjs against two builds, alternating (A B A B) so drift on a
# shared machine hits both. A build is a directory holding an index.js and
# its .node (e.g. a copy of the repo root's before the change).
#   bash bench/before_after.sh /tmp/before [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$(cd "$1" && pwd)
ROUNDS=${2:-2}
for r in $(seq "$ROUNDS"); do
  for build in "$BEFORE" "$PWD"; do
    name=$([ "$build" = "$PWD" ] && echo after || echo before)
    echo "== round $r: $name =="
    CUDA_ENGINE_ADDON="$build/index.js" node bench/submit.mjs --seconds 2 --json | sed "s/^/$name submit: /"
    CUDA_ENGINE_ADDON="$build/index.js" node bench/embed.mjs --no-baseline --sentences 1000 | sed "s/^/$name embed: /"
  done
done
