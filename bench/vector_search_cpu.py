"""NumPy brute-force top-k baseline for bench/vector_search_cpu.mjs: reads the
same float32 data, times `X @ q.T` + argpartition + sort of the k best
(fp32), median of 20 after 3 warm-ups, prints JSON."""
import json, sys, time
import numpy as np

d, n, dims, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
X = np.fromfile(f"{d}/x.f32", dtype=np.float32).reshape(n, dims)
Q = np.fromfile(f"{d}/q.f32", dtype=np.float32).reshape(-1, dims)

def search(q):
    s = q @ X.T
    top = np.argpartition(-s, k, axis=1)[:, :k]
    part = np.take_along_axis(s, top, axis=1)
    order = np.argsort(-part, axis=1)
    return np.take_along_axis(top, order, axis=1)

out = {"version": np.__version__}
for b in (1, 64):
    q = Q[:b]
    for _ in range(3):
        search(q)
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        search(q)
        t.append((time.perf_counter() - t0) * 1e3)
    out[f"b{b}"] = sorted(t)[len(t) // 2]
print(json.dumps(out))
