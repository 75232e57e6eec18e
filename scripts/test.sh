#!/usr/bin/env bash
# The test command (README "Test"): sets up what it needs, builds the addon,
# runs the Rust tests of the workspace and the node:test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# JS tooling (@napi-rs/cli) from the lock file.
if [ ! -x node_modules/.bin/napi ]; then
  npm ci --no-audit --no-fund
fi

# The test model (pinned, checked by sha256), when the script exists.
if [ -f scripts/fetch-model.sh ]; then
  bash scripts/fetch-model.sh
fi

# The addon (.node) and the workspace binaries (cuda-worker) in release mode.
npx napi build --platform --release
cargo build --release --workspace --bins

cargo test --release --workspace
node --test __test__/
