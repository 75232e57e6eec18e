#!/usr/bin/env bash
# Soak and leak benchmark (issue 10; not a test, not in CI): checks the addon
# and the model, then runs bench/soak.mjs at low priority under --expose-gc.
# The JSON lines also go to bench/out/soak-<UTC time>.jsonl (git-ignored).
#   bash bench/soak.sh --quick            # ~1 minute smoke run
#   bash bench/soak.sh                    # the issue's figures
#   bash bench/soak.sh --phases restart-setsid --setsid-restarts 2000
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f cuda-engine.linux-x64-gnu.node ]; then
  echo "soak: no addon; build it: npx napi build --platform --release" >&2
  exit 2
fi
[ -f models/all-MiniLM-L6-v2/model.safetensors ] || bash scripts/fetch-model.sh
mkdir -p bench/out
out="bench/out/soak-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
echo "soak: JSON lines also in $out" >&2
exec nice -n 10 node --expose-gc bench/soak.mjs --out "$out" "$@"
