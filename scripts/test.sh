#!/usr/bin/env bash
# The test command (README "Test"): sets up what it needs, runs the gates
# (format, lints, types, module graph), builds the addon and the worker,
# runs the Rust tests of the workspace, the Go package's tests and the
# node:test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# JS tooling (@napi-rs/cli, typescript, the gRPC test client, the openai client and the
# Prometheus parser the service tests use) from the lock file.
if [ ! -x node_modules/.bin/napi ] || [ ! -x node_modules/.bin/tsc ] || [ ! -d node_modules/@grpc/grpc-js ] || [ ! -d node_modules/@grpc/proto-loader ] \
  || [ ! -d node_modules/openai ] || [ ! -d node_modules/parse-prometheus-text-format ]; then
  npm ci --no-audit --no-fund
fi

# The test model (pinned, checked by sha256).
bash scripts/fetch-model.sh
# huggingface_hub (pinned), the real client the fake hub of tests/hub_server.mjs is checked against
# (__test__/model-hub.test.mjs prints SKIPPED for those checks when it cannot be installed).
python3 -c 'import sys, huggingface_hub as h; sys.exit(h.__version__ != "1.33.0")' 2>/dev/null || python3 -m pip install -q "huggingface_hub==1.33.0" || echo "huggingface_hub==1.33.0 not installed: the hub interoperability tests will be SKIPPED" >&2

# Gates: they fail fast, before the long builds.
cargo fmt --all -- --check
python3 scripts/check-core-cycles.py
bash scripts/check-ts.sh
cargo clippy --release --workspace --all-targets -- -D warnings

# The addon (.node) and the workspace binaries (cuda-worker) in release mode.
npx napi build --platform --release
cargo build --release --workspace --bins

cargo test --release --workspace
[ "${CUDA_ENGINE_SKIP_FUZZ:-0}" = 1 ] || bash scripts/fuzz.sh 6 # fuzz smoke: every fuzz/ target 6 s on its committed corpus (docs/reliability.md "Fuzzing")
if [ -f scripts/test-go.sh ]; then
  CI_REQUIRE_WORKER=1 bash scripts/test-go.sh
fi
node --test __test__/
ARTIFACTS_SKIP_BUILD=1 bash scripts/test-registry.sh # the published packages installed from a local registry, no Rust on PATH
ARTIFACTS_SKIP_BUILD=1 bash scripts/test-examples.sh # examples/ (SvelteKit app in headless Chromium, the orchestrator) installed from the tarballs: docs/examples.md
