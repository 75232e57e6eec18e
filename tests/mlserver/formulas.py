"""The formulas of test_models.py, without MLServer (importable next to
tritonclient, whose generated protos clash with MLServer's). Run as a script:
`python3 formulas.py '{"texts": [...], "normalize": false}'` prints the
embeddings as JSON (float32 values widened to float64, exactly).
"""

import json
import math
import struct
import sys

DIMS = 8
MOD = 1000003


def embed_one(data: bytes, normalize: bool) -> list:
    out = []
    for j in range(DIMS):
        h = j
        for byte in data:
            h = (h * 31 + byte + 1) % MOD
        out.append(h / MOD - 0.5)
    if normalize:
        norm = 0.0
        for v in out:
            norm += v * v
        norm = math.sqrt(norm)
        out = [v / norm for v in out]
    return out


def to_f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


if __name__ == "__main__":
    req = json.loads(sys.argv[1])
    rows = [[to_f32(v) for v in embed_one(t.encode("utf-8"), bool(req.get("normalize")))] for t in req["texts"]]
    print(json.dumps(rows))
