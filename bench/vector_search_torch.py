"""PyTorch baseline for bench/vector_search.rs: torch.topk(q @ X.T, k) on the
same shapes (fp16, random unit vectors, d=384, k=10), data already on the
GPU, CUDA events around the search, median of 20 after 3 warm-up runs.
Prints one JSON line per case. Args: [cases] as in vector_search.rs."""
import json, sys
import torch

d, k = 384, 10
cases = [(1_000_000, 1), (1_000_000, 64), (1_000_000, 1024), (10_000_000, 1), (10_000_000, 64)]
if len(sys.argv) > 1:
    cases = [tuple(int(x) for x in c.split("x")) for c in sys.argv[1].split(",")]
torch.backends.cuda.matmul.allow_tf32 = False
dev = torch.device("cuda")
X = None
cur = None
for n, b in cases:
    if cur != n:
        X = None
        torch.cuda.empty_cache()
        g = torch.Generator(device=dev).manual_seed(7)
        X = torch.empty(n, d, dtype=torch.float16, device=dev)
        for i in range(0, n, 1 << 20):
            c = torch.randn(min(1 << 20, n - i), d, device=dev, generator=g)
            X[i:i + c.shape[0]] = torch.nn.functional.normalize(c, dim=1).half()
        cur = n
    q = torch.nn.functional.normalize(torch.randn(b, d, device=dev), dim=1).half()
    times = []
    for i in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        vals, idx = torch.topk(q @ X.T, k)
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(s.elapsed_time(e))
    times.sort()
    print(json.dumps({"impl": "torch", "n": n, "b": b, "d": d, "k": k, "dev_ms": round(times[len(times) // 2], 4),
                      "torch": torch.__version__}), flush=True)
