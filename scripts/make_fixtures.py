#!/usr/bin/env python3
"""Reference embeddings for the Rust model tests, computed by sentence-transformers.

Writes two files next to each other (default tests/fixtures/):

* embeddings.json - a hand-written list of texts chosen to stress the
  tokenizer and the model: several scripts (CJK, Arabic, Cyrillic, Hindi,
  ...), accents, emoji, empty and whitespace-only strings, punctuation,
  numbers, and texts far over the 256-token limit (truncation).
* holdout.json - texts built differently: random sentences composed from the
  model's own vocab.txt with a fixed seed. These texts exist only in that
  file (they are not written anywhere else in the repository), so the Rust
  side cannot have been tuned against them.

Each record: {"text", "input_ids" (after truncation, with [CLS]/[SEP]),
"n_tokens_untruncated", "embedding" (the model's output, normalized since the
model ends with Normalize), "embedding_raw" (pooled, before Normalize)}.

Usage: python3 scripts/make_fixtures.py [model_dir] [out_dir]
(model_dir defaults to models/all-MiniLM-L6-v2: run scripts/fetch-model.sh)
"""
import json
import os
import random
import sys

import torch
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
OUT_DIR = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "fixtures")

LONG_EN = " ".join(
    f"Sentence number {i} talks about the weather, the markets and the history of computing."
    for i in range(60)
)
LONG_MIXED = ("東京は日本の首都です。 Москва — столица России. " * 40).strip()

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "GPU workers replace the old cuda-worker.exe per job.",
    "How do I install Node.js on Windows?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "I love programming in Rust!",
    "Embeddings map text to vectors; similar texts land close together.",
    # other scripts
    "東京は日本の首都です。",
    "我喜欢吃北京烤鸭。",
    "한국어 문장도 처리할 수 있나요?",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Привет, мир! Как дела?",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "สวัสดีชาวโลก",
    # accents
    "Café crème brûlée à la française, s'il vous plaît.",
    "Ångström, naïve, façade, jalapeño, Zürich, São Paulo.",
    "Ünïcödé äccénts everywhere: ÀÉÎÕÜ àéîõü ß ø å æ œ",
    # emoji and symbols
    "I love pizza 🍕🍕🍕 and tacos 🌮!",
    "👍",
    "🤖 + 🧠 = 🚀",
    "Family: 👨‍👩‍👧‍👦, flags: 🇫🇷🇯🇵",
    # empty and whitespace
    "",
    " ",
    "   \t\n  ",
    # punctuation and numbers
    "!!!???...,,,;;;:::",
    "(a) [b] {c} <d> \"e\" 'f' `g` ~h~ |i| \\j\\ /k/",
    "3.14159 2.71828 1.41421 6.02214076e23",
    "Order #12345 shipped on 2024-03-15 at 14:30 UTC for $1,299.99 (−15%).",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 10000 100000 1000000",
    "user@example.com https://example.com/path?q=1&r=2#frag",
    "C++ vs. C# vs. F# — which one? i.e., e.g., etc.",
    # casing and repetition
    "THIS IS ALL UPPERCASE TEXT",
    "MiXeD CaSe TeXt WiTh NuMbErS 123",
    "the the the the the the the the the the",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Mixed: English, 日本語, русский, العربية, हिन्दी in one sentence.",
    # long texts (truncated to 256 tokens)
    LONG_EN,
    LONG_MIXED,
    "word " * 300,
    # exactly around the limit: 254 content tokens + [CLS] + [SEP] = 256
    " ".join(["hello"] * 254),
    " ".join(["hello"] * 255),
]


def holdout_texts(vocab_path, n=60, seed=20241126):
    """Random 'sentences' composed from whole-word vocab entries."""
    rng = random.Random(seed)
    words = []
    with open(vocab_path, encoding="utf-8") as f:
        for line in f:
            w = line.rstrip("\n")
            if w and not w.startswith("[") and not w.startswith("##") and not w.startswith("[unused"):
                words.append(w)
    out = []
    for i in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 300])
        sent = " ".join(rng.choice(words) for _ in range(k))
        if rng.random() < 0.5:
            sent = sent.capitalize() + rng.choice([".", "?", "!", ""])
        out.append(sent)
    return out


def records(model, texts):
    tok = model.tokenizer
    max_len = model.max_seq_length
    # batch_size=1: no padding at all in the reference, so its numbers are
    # the model's, not a padded approximation.
    emb = model.encode(texts, batch_size=1, convert_to_numpy=True, normalize_embeddings=False)
    # The pooled vector before the Normalize module: run modules 0 and 1 only.
    raw = []
    with torch.no_grad():
        for t in texts:
            feats = model.tokenize([t])
            out = model[1](model[0](feats))
            raw.append(out["sentence_embedding"][0].tolist())
    recs = []
    for i, t in enumerate(texts):
        ids = model.tokenize([t])["input_ids"][0].tolist()
        full = tok(t, add_special_tokens=True, truncation=False)["input_ids"]
        assert len(ids) == min(len(full), max_len), (t, len(ids), len(full))
        recs.append({
            "text": t,
            "input_ids": ids,
            "n_tokens_untruncated": len(full),
            "embedding": [float(x) for x in emb[i]],
            "embedding_raw": raw[i],
        })
    return recs


def main():
    torch.manual_seed(0)
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    model.eval()
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "generator": "scripts/make_fixtures.py",
        "torch": torch.__version__,
    }
    import sentence_transformers
    meta["sentence_transformers"] = sentence_transformers.__version__
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, texts in [
        ("embeddings.json", TEXTS),
        ("holdout.json", holdout_texts(os.path.join(MODEL_DIR, "vocab.txt"))),
    ]:
        doc = dict(meta, records=records(model, texts))
        with open(os.path.join(OUT_DIR, name), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {name}: {len(texts)} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
