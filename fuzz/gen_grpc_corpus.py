#!/usr/bin/env python3
"""Writes the seed corpus of the grpc_messages fuzz target,
fuzz/corpus/grpc_messages/, with the protobuf encoder of a real Open
Inference Protocol client (tritonclient's service_pb2). Each seed is one
selector byte (0 request, 1 response; see fuzz_targets/grpc_messages.rs)
and the wire bytes. Deterministic; file names are the SHA-1 of the content.
Run with the venv of scripts/python-grpc-env.sh:
  $(bash scripts/python-grpc-env.sh) fuzz/gen_grpc_corpus.py"""
import hashlib, os, shutil, struct

import tritonclient.grpc.service_pb2 as pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus", "grpc_messages")


def raw_bytes(items):
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def requests():
    r = pb.ModelInferRequest(model_name="all-MiniLM-L6-v2", id="r1")
    t = r.inputs.add(name="text", datatype="BYTES", shape=[2])
    r.raw_input_contents.append(raw_bytes([b"hello world", "caf\u00e9".encode()]))
    r.parameters["truncate"].bool_param = False
    r.parameters["normalize"].bool_param = True
    yield r
    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="input_ids", datatype="INT64", shape=[1, 4])
    r.inputs.add(name="attention_mask", datatype="INT64", shape=[1, 4])
    r.raw_input_contents.extend([struct.pack("<4q", 101, 7592, 2088, 102), struct.pack("<4q", 1, 1, 1, 1)])
    yield r
    r = pb.ModelInferRequest(model_name="m")
    t = r.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    t.contents.fp32_contents.extend([1.0, -2.5, 0.0, 3.25])
    t = r.inputs.add(name="b", datatype="BOOL", shape=[2])
    t.contents.bool_contents.extend([True, False])
    t = r.inputs.add(name="i8", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([-128, 0, 127])
    t = r.inputs.add(name="s", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"typed")
    r.outputs.add(name="sentence_embedding")
    r.parameters["n"].int64_param = 3
    r.parameters["d"].double_param = 0.5
    r.parameters["s"].string_param = "v"
    yield r
    r = pb.ModelInferRequest()
    r.inputs.add(name="h", datatype="FP16", shape=[2])
    r.raw_input_contents.append(struct.pack("<2H", 0x3C00, 0xC000))
    yield r


def responses():
    r = pb.ModelInferResponse(model_name="all-MiniLM-L6-v2", id="r1")
    r.outputs.add(name="sentence_embedding", datatype="FP32", shape=[1, 4])
    r.raw_output_contents.append(struct.pack("<4f", 0.5, -0.5, 0.25, 0.0))
    yield r
    r = pb.ModelInferResponse(model_name="m")
    o = r.outputs.add(name="y", datatype="INT64", shape=[3])
    o.contents.int64_contents.extend([1, -2, 3])
    o = r.outputs.add(name="t", datatype="BYTES", shape=[2])
    o.contents.bytes_contents.extend([b"a", b""])
    yield r


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    seeds = [b"\x00" + m.SerializeToString() for m in requests()]
    seeds += [b"\x01" + m.SerializeToString() for m in responses()]
    for s in seeds:
        with open(os.path.join(OUT, hashlib.sha1(s).hexdigest()), "wb") as f:
            f.write(s)
    print(f"{len(seeds)} seeds in {OUT}")


main()
