#!/usr/bin/env python3
"""Reference token embeddings (the encoder's last hidden state) for the
infer() tests, computed by sentence-transformers.

Writes tests/fixtures/token_embeddings.json: a few short texts, each with
its `input_ids` (with [CLS]/[SEP]) and `token_embeddings` ([len, hidden],
what `model.encode(..., output_value='token_embeddings')` returns), plus the
normalized `sentence_embedding`.

Every text is encoded on its own (batch_size=1), so the reference has no
padded positions at all: its numbers are the model's, and the Rust side
compares every real token of a padded [batch, seq] result against them.
Values are rounded to 6 decimals (the tests' tolerance is 1e-4).

Usage: python3 scripts/make_token_fixtures.py [model_dir] [out_file]
(model_dir defaults to models/all-MiniLM-L6-v2: run scripts/fetch-model.sh)
"""
import json
import os
import sys

import torch
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "fixtures", "token_embeddings.json")

# Short texts of different lengths (so a batch of them is padded), a few
# scripts, an empty string (just [CLS] [SEP]) and an emoji.
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "",
    "東京は日本の首都です。",
    "Café crème brûlée, s'il vous plaît!",
    "I love pizza 🍕 and tacos.",
    "GPU workers replace the old cuda-worker.exe per job.",
]


def main():
    torch.manual_seed(0)
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    model.eval()
    records = []
    for t in TEXTS:
        ids = model.tokenize([t])["input_ids"][0].tolist()
        tok = model.encode([t], batch_size=1, output_value="token_embeddings", convert_to_numpy=False)[0]
        sent = model.encode([t], batch_size=1, convert_to_numpy=True)[0]
        assert tok.shape[0] == len(ids), (t, tok.shape, len(ids))
        records.append({
            "text": t,
            "input_ids": ids,
            "token_embeddings": [[round(float(x), 6) for x in row] for row in tok.tolist()],
            "sentence_embedding": [round(float(x), 7) for x in sent.tolist()],
        })
    import sentence_transformers
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "hidden_size": len(records[0]["token_embeddings"][0]),
        "generator": "scripts/make_token_fixtures.py",
        "output_value": "token_embeddings",
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "records": records}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(records)} texts")


if __name__ == "__main__":
    main()
