#!/usr/bin/env bash
# The main job (README "Run"): set up what is missing, then embed a few
# sentences with the real model and print health().
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/napi ]; then npm ci --no-audit --no-fund; fi
bash scripts/fetch-model.sh
if ! ls cuda-engine.*.node >/dev/null 2>&1; then npx napi build --platform --release; fi
# Self-reference: `import 'cuda-engine'` resolves to this package (exports map).
node examples/embed.mjs "$@"
