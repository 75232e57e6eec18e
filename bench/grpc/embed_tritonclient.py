"""tritonclient[grpc] against `cuda-worker --grpc` (bench/grpc/embed.mjs runs
it in the same run): one short text, sequential ModelInfer p50/p99, and
batches of 512 in sentences/s. Prints one JSON object.
usage: python embed_tritonclient.py HOST:PORT TEXTS.json SINGLE_N BATCHES_N"""
import json, sys, time

import numpy as np
import tritonclient.grpc as grpcclient

addr, texts_file, single_n, batches_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
texts = json.load(open(texts_file))
c = grpcclient.InferenceServerClient(addr)
name = sys.argv[5] if len(sys.argv) > 5 else "all-MiniLM-L6-v2"
assert c.is_model_ready(name), f"model {name} is not ready"


def infer(batch):
    inp = grpcclient.InferInput("text", [len(batch)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in batch], dtype=np.object_))
    out = grpcclient.InferRequestedOutput("sentence_embedding")
    r = c.infer(name, [inp], outputs=[out])
    return r.as_numpy("sentence_embedding")


for _ in range(50):
    infer([texts["short"]])
xs = []
for _ in range(single_n):
    t = time.perf_counter()
    infer([texts["short"]])
    xs.append((time.perf_counter() - t) * 1e3)
xs.sort()
single = {"p50_ms": round(xs[len(xs) // 2], 3), "p99_ms": round(xs[min(len(xs) - 1, len(xs) * 99 // 100)], 3), "n": single_n}
infer(texts["batch"])
t = time.perf_counter()
for _ in range(batches_n):
    e = infer(texts["batch"])
dt = time.perf_counter() - t
assert e.shape == (512, 384), e.shape
print(json.dumps({"single": single, "batch_512": {"sentences_per_s": round(512 * batches_n / dt), "calls": batches_n}}))
