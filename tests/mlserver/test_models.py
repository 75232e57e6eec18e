"""Deterministic Open Inference Protocol models for the remote client's tests
(__test__/grpc-client.test.mjs), served by MLServer 1.7.1 (`mlserver start`).

Plain Python/NumPy, no ML: every output is a formula of the inputs that the
test recomputes in JavaScript, so the tensors the engine's client receives can
be compared exactly.

- HashEmbedder (`hash-embedder`): input `text` BYTES [n] -> output
  `sentence_embedding` FP32 [n, 8]. For text bytes b and j in 0..8:
  h = j; for each byte: h = (h * 31 + byte + 1) % 1000003;
  v[j] = h / 1000003 - 0.5 (float64), then float32. Request parameter
  `normalize: true`: v / sqrt(sum v^2) in float64 (summed in order) first.
  A text `sleep:MS` waits MS milliseconds first (deadline and cancellation
  tests); a text `fail` raises (a non-OK status).
- TensorMath (`tensor-math`): inputs `x` FP32 [..] and `ids` INT64 [..] ->
  outputs `y` FP32 = x * 2 + 0.5 (float32 arithmetic) and `ids_sq` INT64 =
  ids * ids + 1, with the shapes of the inputs.
"""

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from formulas import DIMS, embed_one


def param(payload: InferenceRequest, key: str):
    p = payload.parameters
    if p is None:
        return None
    value = getattr(p, key, None)
    if value is None and getattr(p, "model_extra", None):
        value = p.model_extra.get(key)
    return value


def exact(name: str, arr: np.ndarray, datatype: str) -> ResponseOutput:
    # With the input's shape as it is (NumpyCodec.encode_output makes [n] [n, 1]).
    return ResponseOutput(name=name, shape=list(arr.shape), datatype=datatype, data=arr.flatten().tolist())


class HashEmbedder(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inp = next(i for i in payload.inputs if i.name == "text")
        texts = StringCodec.decode_input(inp)
        normalize = param(payload, "normalize") is True
        rows = []
        for t in texts:
            raw = t.encode("utf-8") if isinstance(t, str) else bytes(t)
            if raw.startswith(b"sleep:"):
                await asyncio.sleep(int(raw[6:]) / 1000)
            if raw == b"fail":
                raise ValueError("the test model was asked to fail")
            rows.append(embed_one(raw, normalize))
        arr = np.array(rows, dtype=np.float64).astype(np.float32).reshape(len(rows), DIMS)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("sentence_embedding", arr)],
        )


class TensorMath(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        by_name = {i.name: i for i in payload.inputs}
        x = NumpyCodec.decode_input(by_name["x"]).astype(np.float32)
        ids = NumpyCodec.decode_input(by_name["ids"]).astype(np.int64)
        y = (x * np.float32(2) + np.float32(0.5)).astype(np.float32)
        ids_sq = ids * ids + 1
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[exact("y", y, "FP32"), exact("ids_sq", ids_sq, "INT64")],
        )
