#!/usr/bin/env bash
# GPU vector search benchmark on the GPU machine: ours (bench/vector_search.rs,
# built here as the crates/core example `vector_search`) and PyTorch
# (bench/vector_search_torch.py) on the same shapes in the same run, then the
# table with the ratios to PyTorch and to the memory bound (N×d×2 bytes at
# 4.2 TB/s, one read of the fp16 rows).
# Usage: bash bench/vector_search.sh PATH_TO_vector_search_BINARY [cases]
set -euo pipefail
BIN=${1:?usage: vector_search.sh BINARY [cases]}
CASES=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$BIN" $CASES > "$out/ours.jsonl"
python3 "$here/vector_search_torch.py" $CASES > "$out/torch.jsonl"
python3 - "$out/ours.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
torch = {(r["n"], r["b"]): r for r in (json.loads(l) for l in open(sys.argv[2]) if l.startswith("{"))}
print("| N | B | ours dev ms | ours wall ms | PyTorch ms | ours/PyTorch | memory bound ms | ours/bound |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in ours:
    t = torch.get((r["n"], r["b"]), {}).get("dev_ms", float("nan"))
    bound = r["n"] * r["d"] * 2 / 4.2e12 * 1e3
    print(f"| {r['n']:,} | {r['b']} | {r['dev_ms']:.3f} | {r['wall_ms']:.3f} | {t:.3f} | {r['dev_ms']/t:.2f} | {bound:.3f} | {r['dev_ms']/bound:.2f} |")
PY
