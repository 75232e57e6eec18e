#!/usr/bin/env bash
# Prepare a GPU run (docs/gpu.md): build here, stage everything under .gpu/
# (git-ignored), and print the commands to run on the GPU machine.
#
#   scripts/gpu-check.sh            build + stage (both bundles)
#   scripts/gpu-check.sh --print    only print the commands
#
# The GPU machine has no cargo/node/network and a 64 MiB limit on what one
# call carries, so the work travels in two bundles, run back to back while
# the machine is warm (files under /root survive between calls):
#   1. tests:  .gpu/model (fp16 safetensors copy, ~45 MB) + .gpu/bin (test
#              binaries, xz). Runs the CUDA tests and leaves the model in
#              /root/model.
#   2. bench:  .gpu/node.xz (~24 MB) + .gpu/addon (.node, xz) + .gpu/bench
#              (corpus and sentence-transformers baseline scripts). Prints
#              health() and runs bench/embed_gpu.mjs and the same-run
#              sentence-transformers baselines against /root/model.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=${CUDA_ENGINE_MODEL:-$ROOT/models/all-MiniLM-L6-v2}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}

print_commands() {
  cat <<'EOF'
== GPU call 1 (carry: [".gpu/model", ".gpu/bin"]) ==
set -o pipefail; mkdir -p /root/model && cp -r .gpu/model/. /root/model/ && \
mkdir -p /work && ln -sfn "$PWD" /work/main && cd /work/main && \
for f in .gpu/bin/*.xz; do xz -dc "$f" > "${f%.xz}"; chmod +x "${f%.xz}"; done && \
export CUDA_ENGINE_MODEL=/root/model CUDA_ENGINE_REQUIRE_GPU=1 && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv && \
.gpu/bin/cuda_embed --include-ignored --skip cuda_forward_timings --skip cuda_profile_big_pass --test-threads 1 --nocapture 2>&1 | tee $OUT/tests.log; \
.gpu/bin/cuda_fault --ignored --nocapture 2>&1 | tee -a $OUT/tests.log; \
.gpu/bin/cuda_embed --ignored cuda_forward_timings --nocapture 2>&1 | tee -a $OUT/tests.log

== GPU call 2, right after call 1 (carry: [".gpu/node.xz", ".gpu/addon", ".gpu/bench"]) ==
bash bench/embed_gpu.sh 2>&1 | tee $OUT/bench.log
EOF
}

if [ "${1:-}" = "--print" ]; then
  print_commands
  exit 0
fi

mkdir -p .gpu/bin .gpu/model .gpu/addon .gpu/bench
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >> "$EXCLUDE"

# 1. Test binaries (release) and the addon.
echo "building test binaries…" >&2
cargo test --release -p cuda-engine-core --test cuda_embed --test cuda_fault --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".gpu/bin/" + m["target"]["name"])
        print("  .gpu/bin/" + m["target"]["name"], file=sys.stderr)
'
for f in .gpu/bin/cuda_embed .gpu/bin/cuda_fault; do
  test -x "$f" || { echo "missing $f" >&2; exit 1; }
  xz -T2 -6 -f "$f"
done
echo "building the addon…" >&2
npx napi build --platform --release >&2
xz -T2 -6 -c cuda-engine.linux-x64-gnu.node > .gpu/addon/cuda-engine.linux-x64-gnu.node.xz

# 2. Node, compressed (reused when present and not older than the binary).
NODE_BIN=$(command -v node)
if [ ! -s .gpu/node.xz ] || [ "$NODE_BIN" -nt .gpu/node.xz ]; then
  echo "compressing node…" >&2
  xz -T2 -6 -c "$NODE_BIN" > .gpu/node.xz
fi

# 3. The model as an fp16 safetensors copy (integer tensors kept as they are).
python3 - "$MODEL" .gpu/model <<'PY'
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
for name in ["config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt", "config_sentence_transformers.json"]:
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
if os.path.isdir(os.path.join(src, "1_Pooling")):
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(dst, "1_Pooling"), dirs_exist_ok=True)
out = os.path.join(dst, "model.safetensors")
if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(os.path.join(src, "model.safetensors")):
    t = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in t.items()}, out)
print(f"  {dst}: {sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(dst) for f in fs) / 2**20:.1f} MiB", file=sys.stderr)
PY

# 4. Benchmark helpers (../shared does not travel). The carried model stores
#    fp16, so the baseline first casts to fp32 (`m.float()`): both baselines
#    then start from fp32 weights as with the original file (fp16: `.half()`).
cp "$SHARED_BENCH/make_corpus.py" .gpu/bench/
sed 's/^m = SentenceTransformer(a.model, device=a.device)$/&\nm.float()/' "$SHARED_BENCH/st_baseline.py" > .gpu/bench/st_baseline.py
grep -q '^m.float()' .gpu/bench/st_baseline.py

du -sh .gpu/model .gpu/bin .gpu/node.xz .gpu/addon .gpu/bench >&2
print_commands
