#!/usr/bin/env bash
# Runs ON the GPU machine (see docs/gpu.md; scripts/gpu-check.sh stages
# .gpu/ here first): health(), bench/embed_gpu.mjs for fp16 (and fp32), and
# sentence-transformers fp16/fp32 on the same corpus in the same run, then a
# summary with the ratios. Reads the model from $CUDA_ENGINE_MODEL
# (default /root/model, left there by GPU call 1).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${CUDA_ENGINE_MODEL:-/root/model}
R=${OUT:-/tmp/gpu-out}
mkdir -p "$R" bench/out
test -f "$MODEL/model.safetensors" || { echo "no model at $MODEL (run GPU call 1 first, back to back)"; exit 2; }
xz -dc .gpu/node.xz > /usr/local/bin/node && chmod +x /usr/local/bin/node
xz -dc .gpu/addon/cuda-engine.linux-x64-gnu.node.xz > cuda-engine.linux-x64-gnu.node
python3 .gpu/bench/make_corpus.py "$MODEL/vocab.txt" > bench/out/corpus.txt
python3 .gpu/bench/make_corpus.py "$MODEL/vocab.txt" 2000 1 > bench/out/short.txt
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv

echo "== health() (default engine, nothing loaded) =="
node -e "require('./index.js').health().then(h=>console.log(JSON.stringify(h,null,1)))" | tee "$R/health.json"
echo "== health() after one embed (model loaded) =="
CUDA_ENGINE_MODEL=$MODEL node -e "const m=require('./index.js'); m.embed('hello').then(()=>m.health()).then(h=>console.log(JSON.stringify(h,null,1)))" | tee "$R/health_loaded.json"

for dt in ${DTYPES:-fp16 fp32}; do
  echo "== cuda-engine $dt =="
  node --expose-gc bench/embed_gpu.mjs --model "$MODEL" --corpus bench/out/corpus.txt --short bench/out/short.txt --dtype $dt --json "$R/ours_$dt.json"
done
echo "== sentence-transformers fp16 =="
PYTHONUNBUFFERED=1 python3 .gpu/bench/st_baseline.py "$MODEL" bench/out/corpus.txt --dtype fp16 --single bench/out/short.txt | tee "$R/st_fp16.json"
echo "== sentence-transformers fp32 =="
PYTHONUNBUFFERED=1 python3 .gpu/bench/st_baseline.py "$MODEL" bench/out/corpus.txt --dtype fp32 --single bench/out/short.txt | tee "$R/st_fp32.json"

python3 - "$R" <<'PY'
import json, os, sys
r = sys.argv[1]
ld = lambda n: json.load(open(os.path.join(r, n))) if os.path.exists(os.path.join(r, n)) else None
st = {d: ld(f"st_{d}.json") for d in ("fp16", "fp32")}
toks = (st["fp16"] or {}).get("tokens")
print("\n== summary (sentences/s; same run, same corpus; tokens from sentence-transformers' count) ==")
for d in ("fp16", "fp32"):
    o, s = ld(f"ours_{d}.json"), st[d]
    if not o or not s: continue
    print(f"-- {d} --")
    for k in ("batch_32", "batch_128", "batch_512"):
        a, b = o[k]["sentences_per_s"], s[k]["sentences_per_s"]
        print(f"{k:>34}: ours {a:9.0f}  st {b:9.0f}  x{a / b:5.2f}")
    b512 = s["batch_512"]["sentences_per_s"]
    for k in ("whole_corpus_one_call", "whole_corpus_16_concurrent_calls"):
        a = o[k]["sentences_per_s"]
        print(f"{k:>34}: ours {a:9.0f} ({a * toks / o['sentences'] if toks else 0:9.0f} tok/s)  vs st batch 512 x{a / b512:5.2f}")
    print(f"{'single p50/p99 ms':>34}: ours {o['single_ms']['p50']:.3f}/{o['single_ms']['p99']:.3f}  st {s['single_ms']['p50']:.2f}/{s['single_ms']['p99']:.2f}")
    print(f"{'gpu memory (process, MiB)':>34}: {o['gpu_memory_process_mib']}")
PY
