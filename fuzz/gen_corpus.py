#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/, from the repo's
test data (tests/envelope_cases.json, tests/fixtures/embeddings.json) and the
protocol docs' examples. Deterministic; file names are the SHA-1 of the
content (libFuzzer's own naming). Re-run after changing a target's input
layout: python3 fuzz/gen_corpus.py"""
import base64, hashlib, json, os, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


# ---- minimal CBOR / MessagePack encoders for JSON values + bytes ----------
def cbor_head(major, n):
    m = major << 5
    if n < 24:
        return bytes([m | n])
    for add, fmt, lim in ((24, ">B", 0xFF), (25, ">H", 0xFFFF), (26, ">I", 0xFFFFFFFF), (27, ">Q", 2**64 - 1)):
        if n <= lim:
            return bytes([m | add]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(v):
    if v is None:
        return b"\xf6"
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if isinstance(v, int):
        return cbor_head(0, v) if v >= 0 else cbor_head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, bytes):
        return cbor_head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return cbor_head(3, len(b)) + b
    if isinstance(v, list):
        return cbor_head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return cbor_head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(type(v))


def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, bytes):
        n = len(v)
        return (b"\xc4" + bytes([n]) if n < 256 else b"\xc6" + struct.pack(">I", n)) + v
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        n = len(b)
        return (bytes([0xA0 | n]) if n < 32 else b"\xdb" + struct.pack(">I", n)) + b
    if isinstance(v, list):
        n = len(v)
        return (bytes([0x90 | n]) if n < 16 else b"\xdd" + struct.pack(">I", n)) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xdf" + struct.pack(">I", n)
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(type(v))


def frame(fmt, body):
    return bytes([0xC1, fmt]) + struct.pack(">I", len(body)) + body


def enc(fmt, v):
    return cbor(v) if fmt == 1 else mp(v)


# ---- inputs from the repo --------------------------------------------------
cases = json.load(open(os.path.join(ROOT, "tests", "envelope_cases.json")))
fixtures = json.load(open(os.path.join(ROOT, "tests", "fixtures", "embeddings.json")))
texts = [r["text"] for r in fixtures["records"]][:12]


def case_input(c):
    if "input" in c:
        return c["input"].encode("utf-8", "surrogatepass")
    if "input_b64" in c:
        return base64.b64decode(c["input_b64"])
    out = b""
    for text, times in c["input_parts"]:
        out += text.encode() * times
        if len(out) > 1 << 16:
            return None
    return out


def jdump(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


corpus = {t: [] for t in ("envelope", "base64", "cbor_msgpack", "worker_protocol", "infer_request")}

# envelope: every case small enough for a seed, and envelopes around the fixtures.
payloads = []
for c in cases["envelope_cases"]:
    b = case_input(c)
    if b is not None and len(b) <= 1 << 16:
        corpus["envelope"].append(b)
    p = c.get("expect", {}).get("payload")
    if p is not None:
        payloads.append(p)
payloads += [{"texts": texts[:3]}, {"text": texts[0]}, {"a": [1, -2, 3.5, "x", None, True]}, [[[]]], 1e300, -0.0]
for i, p in enumerate(payloads[:12]):
    corpus["envelope"].append(jdump({"type": "echo", "id": i, "payload": p}))
    corpus["envelope"].append(jdump({"type": "echo", "payload_b64": base64.b64encode(jdump(p)).decode()}))
for fmt, name in ((1, "cbor"), (2, "msgpack")):
    corpus["envelope"].append(
        jdump({"type": "echo", "encoding": name, "payload_b64": base64.b64encode(enc(fmt, {"t": texts[1]})).decode()})
    )

# base64: mode byte 0 (decode the text) + every base64 case; mode 1 (round trip) + bytes.
for c in cases["base64_cases"]:
    corpus["base64"].append(b"\x00" + c["input"].encode("utf-8", "surrogatepass"))
for t in texts[:8]:
    raw = t.encode()
    corpus["base64"].append(b"\x00" + base64.b64encode(raw))
    corpus["base64"].append(b"\x00" + base64.urlsafe_b64encode(raw).rstrip(b"="))
    corpus["base64"].append(b"\x01" + raw)

# cbor_msgpack: mode byte 0 (CBOR) / 1 (MessagePack) + the payloads, plus hand-made edge cases.
for p in payloads[:16]:
    corpus["cbor_msgpack"].append(b"\x00" + cbor(p))
    corpus["cbor_msgpack"].append(b"\x01" + mp(p))
corpus["cbor_msgpack"] += [
    b"\x00" + bytes.fromhex("9fff"),  # indefinite empty array
    b"\x00" + bytes.fromhex("bf6161f5ff"),  # indefinite map
    b"\x00" + bytes.fromhex("c249010000000000000000"),  # bignum 2^64
    b"\x00" + bytes.fromhex("f97e00"),  # f16 NaN
    b"\x00" + bytes.fromhex("a1016161"),  # integer key
    b"\x00" + bytes.fromhex("44deadbeef"),  # byte string
    b"\x01" + bytes.fromhex("c7010561"),  # ext 8
    b"\x01" + bytes.fromhex("ca7fc00000"),  # f32 NaN
    b"\x01" + bytes.fromhex("81a161c403010203"),  # map with bin value
    b"\x01" + bytes.fromhex("d0ff"),  # int8 -1
    b"\x01" + b"\x91" * 500 + b"\xc0",  # 500 deep: within rmp-serde's limit, over ciborium's (found by the fuzzer)
    b"\x00" + b"\x81" * 300 + b"\xf6",  # 300 deep CBOR: over the recursion limit
]

# worker_protocol: limit byte + streams of responses and requests (docs/worker-protocol.md).
resp_lines = [
    {"id": 1, "ok": True, "encoding": "json", "result": {"text": "hi"}},
    {"id": 2, "ok": True, "encoding": "json", "result": {"model": "m", "dims": 3, "embeddings": [[0.1, 0.2, 0.3]]}},
    {"id": 3, "ok": False, "error": {"code": "E_UNKNOWN_TYPE", "message": "no runner"}},
    {"id": 4, "ok": False, "error": {"code": "E_NOT_A_CODE", "message": "x"}},
    {"id": 5, "ok": True, "encoding": "raw", "result_b64": base64.b64encode(b"\x00\x01\xff").decode()},
    {"ok": True, "result": 1},
    {"id": 6, "cancel": True},
]
req_lines = [
    {"id": 1, "type": "echo", "payload": {"text": "hi"}},
    {"id": 2, "type": "embedding", "job_id": "req-7", "payload": {"texts": texts[:2]}},
    {"id": 3, "cancel": True},
]
for fmt in (1, 2):
    for limit in (0, 7, 15):
        stream = b"".join(jdump(x) + b"\n" for x in resp_lines[:3])
        stream += frame(fmt, enc(fmt, {"id": 7, "ok": True, "encoding": "raw", "result": b"\x00\x01\x02"}))
        stream += b"\n\n" + frame(fmt, enc(fmt, {"id": 8, "ok": False, "error": {"code": "E_TOO_LONG", "message": "t"}}))
        corpus["worker_protocol"].append(bytes([limit]) + stream)
    for x in resp_lines + req_lines:
        corpus["worker_protocol"].append(bytes([15]) + frame(fmt, enc(fmt, x)))
    corpus["worker_protocol"].append(
        bytes([15]) + frame(fmt, enc(fmt, {"id": 9, "type": "echo", "job_id": "j1", "encoding": "raw", "payload": b"\xc1\x00"}))
    )
    corpus["worker_protocol"].append(bytes([3]) + frame(fmt, enc(fmt, {"id": 1, "ok": True, "result": "x" * 300})))
for x in resp_lines + req_lines:
    corpus["worker_protocol"].append(bytes([15]) + jdump(x) + b"\n")
corpus["worker_protocol"] += [bytes([15]) + b"  \n" + jdump(resp_lines[0]), bytes([0]) + b"\xc1\x03\x00\x00\x00\x00",
                              bytes([0]) + b"\xc1\x01\xff\xff\xff\xff", bytes([1]) + b"x" * 200 + b"\n"]

# infer_request: requests and responses of docs/infer.md, every datatype, nested data; raw tensor bytes.
dts = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
sample = {"BOOL": [True, False], "BYTES": ["a", "b"], "FP16": [0.5, 65504], "FP32": [1.5, -2.25], "FP64": [1e-300, 3.0]}
reqs = [
    {"id": "r1", "model_name": "all-MiniLM-L6-v2", "parameters": {"normalize": True, "truncate": True},
     "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts[:2]}],
     "outputs": [{"name": "sentence_embedding"}]},
    {"inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": [[101, 7592, 2088, 102]]},
                {"name": "attention_mask", "shape": [1, 4], "datatype": "INT64", "data": [1, 1, 1, 1]}]},
    {"model_name": "all-MiniLM-L6-v2"},
]
for dt in dts:
    reqs.append({"id": 7, "inputs": [{"name": "x", "shape": [2], "datatype": dt, "data": sample.get(dt, [1, 2]),
                                      "parameters": {"p": 1}}]})
reqs.append({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, -4]]}]})
reqs.append({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}]})
resps = [{"model_name": "m", "id": "1", "outputs": [{"name": "sentence_embedding", "shape": [1, 3], "datatype": "FP32",
                                                     "data": [0.1, 0.2, 0.3]}]},
         {"model_name": "m", "model_version": "1", "outputs": [{"name": "y", "shape": [0], "datatype": "INT64", "data": []}]}]
for r in reqs + resps:
    corpus["infer_request"].append(jdump(r))
for i, dt in enumerate(dts):
    corpus["infer_request"].append(bytes([i]) + bytes(range(8)))
corpus["infer_request"].append(bytes([0]) + b"\x00\x01\x02")

shutil.rmtree(OUT, ignore_errors=True)
for target, seeds in corpus.items():
    d = os.path.join(OUT, target)
    os.makedirs(d)
    for s in seeds:
        with open(os.path.join(d, hashlib.sha1(s).hexdigest()), "wb") as f:
            f.write(s)
    print(target, len(set(seeds)), "seeds")
