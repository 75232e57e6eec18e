"""tritonclient[grpc] (a real Open Inference Protocol client, unchanged)
against `cuda-worker --grpc`.

    python tests/grpc_tritonclient.py HOST:PORT EXPECTED.json

EXPECTED.json (written by __test__/grpc-server.test.mjs from the in-process
addon): {texts, embeddings, ids: {shape, input_ids, attention_mask,
sentence_embedding}}. Exits non-zero on the first failed check; prints
"tritonclient: all checks passed" at the end.
"""

import json
import queue
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "all-MiniLM-L6-v2"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    url, ref_path = sys.argv[1], sys.argv[2]
    with open(ref_path, encoding="utf8") as f:
        ref = json.load(f)
    texts = ref["texts"]
    expected = np.asarray(ref["embeddings"], dtype=np.float32)
    client = grpcclient.InferenceServerClient(url=url)

    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    check(client.is_model_ready(MODEL), "is_model_ready")
    check(not client.is_model_ready("no-such-model"), "is_model_ready(no-such-model) is false")
    meta = client.get_server_metadata(as_json=True)
    check(meta["name"] == "cuda-engine" and meta["version"], f"get_server_metadata {meta}")
    mm = client.get_model_metadata(MODEL, as_json=True)
    check(mm["name"] == MODEL, "get_model_metadata name")
    ins = {t["name"]: t["datatype"] for t in mm["inputs"]}
    outs = {t["name"]: t["datatype"] for t in mm["outputs"]}
    check(ins.get("text") == "BYTES" and ins.get("input_ids") == "INT64", f"model inputs {ins}")
    check(outs.get("sentence_embedding") == "FP32", f"model outputs {outs}")
    try:
        client.get_model_metadata("no-such-model")
        check(False, "get_model_metadata(no-such-model) fails")
    except InferenceServerException as e:
        check("E_UNKNOWN_MODEL" in str(e), f"get_model_metadata(no-such-model) fails: {e}")

    # BYTES text in (tritonclient always sends raw contents).
    inp = grpcclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    out = grpcclient.InferRequestedOutput("sentence_embedding")
    t0 = time.perf_counter()
    res = client.infer(MODEL, [inp], outputs=[out], request_id="t1")
    ms = (time.perf_counter() - t0) * 1e3
    emb = res.as_numpy("sentence_embedding")
    check(emb.shape == (len(texts), 384) and emb.dtype == np.float32, f"infer BYTES: shape {emb.shape}")
    c = cosines(emb, expected)
    check(c.min() >= 0.99999, f"infer BYTES vs in-process embed: min cosine {c.min():.7f} ({ms:.1f} ms)")
    check(res.get_response().id == "t1", "the request id comes back")

    # INT64 token ids (and mask) in: the same embeddings as the text.
    ids = ref["ids"]
    shape = ids["shape"]
    input_ids = np.asarray(ids["input_ids"], dtype=np.int64).reshape(shape)
    mask = np.asarray(ids["attention_mask"], dtype=np.int64).reshape(shape)
    a = grpcclient.InferInput("input_ids", shape, "INT64")
    a.set_data_from_numpy(input_ids)
    m = grpcclient.InferInput("attention_mask", shape, "INT64")
    m.set_data_from_numpy(mask)
    res = client.infer(MODEL, [a, m], outputs=[grpcclient.InferRequestedOutput("sentence_embedding")])
    emb = res.as_numpy("sentence_embedding")
    want = np.asarray(ids["sentence_embedding"], dtype=np.float32).reshape(emb.shape)
    c = cosines(emb, want)
    check(c.min() >= 0.99999, f"infer INT64 input_ids + attention_mask: min cosine {c.min():.7f}")
    # INT32 ids are accepted too; FP32 is not an input of this model: a coded error.
    a32 = grpcclient.InferInput("input_ids", shape, "INT32")
    a32.set_data_from_numpy(input_ids.astype(np.int32))
    res = client.infer(MODEL, [a32], outputs=[grpcclient.InferRequestedOutput("last_hidden_state")])
    h = res.as_numpy("last_hidden_state")
    check(h.shape == (shape[0], shape[1], 384), f"infer INT32 ids -> last_hidden_state {h.shape}")
    f = grpcclient.InferInput("input_ids", shape, "FP32")
    f.set_data_from_numpy(input_ids.astype(np.float32))
    try:
        client.infer(MODEL, [f])
        check(False, "FP32 input_ids are refused")
    except InferenceServerException as e:
        check("E_INVALID_ARG" in str(e), f"FP32 input_ids are refused: {str(e)[:120]}")

    # Streaming: several responses, one in-band error, the stream stays open.
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for i, t in enumerate(texts[:4]):
        x = grpcclient.InferInput("text", [1], "BYTES")
        x.set_data_from_numpy(np.array([t.encode()], dtype=np.object_))
        client.async_stream_infer(MODEL, [x], request_id=f"s{i}")
        if i == 1:
            bad = grpcclient.InferInput("bogus", [1], "BYTES")
            bad.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
            client.async_stream_infer(MODEL, [bad], request_id="bad")
    got, errors = {}, []
    for _ in range(5):
        result, error = results.get(timeout=60)
        if error is not None:
            errors.append(str(error))
        else:
            got[result.get_response().id] = result.as_numpy("sentence_embedding")
    client.stop_stream()
    check(sorted(got) == ["s0", "s1", "s2", "s3"], f"stream: 4 answers {sorted(got)}")
    check(len(errors) == 1 and "E_INVALID_ARG" in errors[0], f"stream: one in-band error {errors}")
    for i in range(4):
        c = cosines(got[f"s{i}"], expected[i : i + 1])
        check(c.min() >= 0.99999, f"stream answer s{i} vs in-process (cosine {c.min():.7f})")

    # The unary path keeps working, and many small calls: latency.
    one = grpcclient.InferInput("text", [1], "BYTES")
    one.set_data_from_numpy(np.array([b"hello world"], dtype=np.object_))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        client.infer(MODEL, [one], outputs=[grpcclient.InferRequestedOutput("sentence_embedding")])
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"small infer (1 text): median {sorted(times)[len(times) // 2]:.2f} ms over {len(times)}")
    client.close()
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    main()
