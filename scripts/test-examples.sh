#!/usr/bin/env bash
# The examples as a user runs them (issue 15, docs/examples.md): the two npm
# tarballs of scripts/artifacts.sh (cuda-engine and cuda-engine-linux-x64-gnu),
# each example copied into a fresh folder and `npm install`ed there with them
# and its pinned devDependencies (no cargo or rustc on PATH), then:
#   examples/orchestrator: tsc --strict, node dist/main.js, every job's line checked;
#   examples/sveltekit:    svelte-kit sync, tsc --strict, svelte-check, vite build,
#                          `node build` on a free port, /api/health, /api/embed
#                          (= embed() within 1e-6), /api/search, and the page in
#                          headless Chromium (playwright-core, /usr/bin/chromium):
#                          a query typed and submitted, the top hit and its score
#                          checked, a screenshot saved (artifacts/sveltekit-search.png);
#                          then SIGTERM: the server must exit, and no process is left.
# Chromium is installed with apt-get when missing (CI starts bare); if that
# fails the test fails, unless CUDA_ENGINE_SKIP_BROWSER=1 (browser part SKIPPED).
# Called by scripts/test.sh after the builds (ARTIFACTS_SKIP_BUILD=1); on its
# own it builds what is missing.
#   bash scripts/test-examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PLAYWRIGHT_VERSION=1.65.1
model=${CUDA_ENGINE_MODEL:-$repo/models/all-MiniLM-L6-v2}
chromium=${CHROMIUM:-/usr/bin/chromium}
screenshot=${CUDA_ENGINE_SCREENSHOT:-$repo/artifacts/sveltekit-search.png}
# npm's cache for these installs (CI may keep it between runs: ~/.cache/cuda-engine).
export npm_config_cache=${XDG_CACHE_HOME:-$HOME/.cache}/cuda-engine/npm-examples
[ -f "$model/config.json" ] || bash scripts/fetch-model.sh

t0=$(date +%s)
say() { echo "examples-test: [$(($(date +%s) - t0))s] $*"; }
fail() { echo "examples-test: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cuda-examples-XXXXXX")
spid= apt_pid=
cleanup() {
  # The server runs in its own process group (setsid): end that group.
  if [ -n "$spid" ]; then kill -TERM -- "-$spid" 2>/dev/null || true; sleep 0.5; kill -KILL -- "-$spid" 2>/dev/null || true; fi
  # Never interrupt dpkg half-way: let a running install finish.
  if [ -n "$apt_pid" ]; then wait "$apt_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# 1. Chromium, installed in the background while npm installs (about 40 s).
skip_browser=
if [ ! -x "$chromium" ]; then
  if [ "${CUDA_ENGINE_SKIP_BROWSER:-0}" = 1 ]; then
    skip_browser="no $chromium and CUDA_ENGINE_SKIP_BROWSER=1: not installing it"
  elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    fail "$chromium is missing and cannot be installed here (needs root and apt-get: apt-get install -y chromium); set CUDA_ENGINE_SKIP_BROWSER=1 to skip the browser check"
  else
    say "installing chromium with apt-get (in the background)"
    (
      export DEBIAN_FRONTEND=noninteractive
      # Without package lists (a fresh machine) the first try fails: update, then retry.
      apt-get install -y -qq --no-install-recommends chromium || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }
    ) >"$tmp/apt.log" 2>&1 &
    apt_pid=$!
  fi
fi

# 2. The tarballs. ARTIFACTS_SKIP_BUILD=1 (scripts/test.sh, after its builds)
# packs what is built; unset, the same when the addon and cuda-worker are
# both built, else it builds them first; 0 always runs the release builds.
skip_build=${ARTIFACTS_SKIP_BUILD:-}
if [ -z "$skip_build" ]; then
  if [ -f cuda-engine.linux-x64-gnu.node ] && [ -x target/release/cuda-worker ]; then skip_build=1; else skip_build=0; fi
fi
ARTIFACTS_SKIP_BUILD=$skip_build bash scripts/artifacts.sh "$tmp/dist" | sed 's/^/examples-test: /'
version=$(node -p 'require("./package.json").version')
main_tgz=$tmp/dist/cuda-engine-$version.tgz
platform_tgz=$tmp/dist/cuda-engine-linux-x64-gnu-$version.tgz
[ -f "$main_tgz" ] && [ -f "$platform_tgz" ] || fail "scripts/artifacts.sh made no $main_tgz and $platform_tgz"

# 3. A PATH with node and npm and the base system, without cargo or rustc.
source "$repo/scripts/no-cargo-path.sh"
userpath=$(no_cargo_path "$tmp") || fail "cannot build a PATH without cargo/rustc"

# 4. Each example in a fresh folder: its files (no node_modules, build output or
# lock file), cuda-engine and the platform package from the tarballs, the
# example's own pinned devDependencies (+ playwright-core for the browser check).
prepare() {
  local name=$1 extra=$2 dir=$tmp/$1
  mkdir -p "$dir"
  (cd "examples/$name" && tar --exclude=./node_modules --exclude=./build --exclude=./.svelte-kit --exclude=./dist \
    --exclude=./package-lock.json -cf - .) | tar -xf - -C "$dir"
  node -e '
    const fs = require("node:fs"), [f, main, platform, extra] = process.argv.slice(1)
    const pkg = JSON.parse(fs.readFileSync(f, "utf8"))
    if (!pkg.dependencies?.["cuda-engine"]) throw new Error(`${f}: cuda-engine is not in dependencies`)
    if (pkg.devDependencies?.["cuda-engine"]) throw new Error(`${f}: cuda-engine is in devDependencies`)
    for (const [k, v] of Object.entries({ ...pkg.dependencies, ...pkg.devDependencies }))
      if (k !== "cuda-engine" && !/^\d+\.\d+\.\d+$/.test(v)) throw new Error(`${f}: ${k}@${v} is not an exact version`)
    pkg.dependencies["cuda-engine"] = `file:${main}`
    pkg.dependencies["cuda-engine-linux-x64-gnu"] = `file:${platform}`
    Object.assign((pkg.devDependencies ??= {}), JSON.parse(extra))
    fs.writeFileSync(f, JSON.stringify(pkg, null, 2) + "\n")' "$dir/package.json" "$main_tgz" "$platform_tgz" "$extra"
  local i0
  i0=$(date +%s)
  (cd "$dir" && PATH=$userpath npm install --no-audit --no-fund --prefer-offline --loglevel=error >"$tmp/npm-$name.log" 2>&1) ||
    { cat "$tmp/npm-$name.log" >&2; fail "npm install in examples/$name"; }
  [ -f "$dir/node_modules/cuda-engine-linux-x64-gnu/cuda-worker" ] || fail "$name: the platform package was not installed"
  echo "$name: npm install $(($(date +%s) - i0)) s, $(ls "$dir/node_modules" | wc -l) top-level packages"
}
say "npm install of both examples (cache $npm_config_cache)"
prepare orchestrator '{}' >"$tmp/prep-orchestrator.out" &
p1=$!
prepare sveltekit "{\"playwright-core\": \"$PLAYWRIGHT_VERSION\"}" >"$tmp/prep-sveltekit.out" &
p2=$!
wait $p1 || fail "preparing examples/orchestrator"
wait $p2 || fail "preparing examples/sveltekit"
say "$(cat "$tmp/prep-orchestrator.out")"
say "$(cat "$tmp/prep-sveltekit.out")"

# What the examples run under: that PATH, the test model, the bundled worker (no CUDA_WORKER_PATH).
run_env=(env -u CUDA_WORKER_PATH -u NAPI_RS_NATIVE_LIBRARY_PATH PATH="$userpath" CUDA_ENGINE_MODEL="$model" HF_HUB_OFFLINE=1)

# 5. The orchestrator: tsc --strict (emits dist/), run, check every line.
(
  cd "$tmp/orchestrator"
  "${run_env[@]}" npx --no-install tsc --strict -p .
  echo "examples-test: orchestrator: tsc --strict -p . ok"
  set +e
  "${run_env[@]}" timeout 120 node dist/main.js >"$tmp/orchestrator.jsonl" 2>"$tmp/orchestrator.err"
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then cat "$tmp/orchestrator.jsonl" "$tmp/orchestrator.err" >&2; fail "orchestrator: node dist/main.js exited $rc"; fi
  sed 's/^/examples-test:   | /' "$tmp/orchestrator.jsonl" | cut -c1-240
  "${run_env[@]}" node test/check.mjs "$tmp/orchestrator.jsonl" | sed 's/^/examples-test: /'
) || fail "examples/orchestrator"
say "orchestrator: ok (exit 0)"

# 6. The SvelteKit app: types, then the production build.
(
  cd "$tmp/sveltekit"
  "${run_env[@]}" npx --no-install svelte-kit sync
  "${run_env[@]}" npx --no-install tsc --strict --noEmit -p .
  echo "examples-test: sveltekit: tsc --strict --noEmit -p . ok"
  "${run_env[@]}" npx --no-install svelte-check --tsconfig ./tsconfig.json --fail-on-warnings --output human | tail -1 | sed 's/^/examples-test: sveltekit: /'
  "${run_env[@]}" npx --no-install vite build >"$tmp/vite-build.log" 2>&1 || { cat "$tmp/vite-build.log" >&2; exit 1; }
  [ -f build/index.js ] || { echo "no build/index.js" >&2; exit 1; }
  # adapter-node left the addon external (it is in dependencies): no .node in build/.
  if find build -name '*.node' | grep -q .; then echo "build/ contains a .node file" >&2; exit 1; fi
  grep -rqE "from ['\"]cuda-engine['\"]" build/server || { echo "build/server does not import cuda-engine" >&2; exit 1; }
  echo "examples-test: sveltekit: vite build ok ($(du -sh build | cut -f1), cuda-engine external)"
) || fail "examples/sveltekit: type-check or build"
say "sveltekit: built"

# 7. `node build` on a free port; the API and the page.
if [ -n "$apt_pid" ]; then
  say "waiting for the chromium install"
  if ! wait "$apt_pid"; then
    apt_pid=
    tail -30 "$tmp/apt.log" >&2
    fail "apt-get install -y chromium failed (log above); the browser check must run (CUDA_ENGINE_SKIP_BROWSER=1 skips it)"
  fi
  apt_pid=
  [ -x "$chromium" ] || fail "apt-get installed chromium but there is no $chromium"
  say "chromium installed: $("$chromium" --version 2>/dev/null || echo '?')"
fi
port=$(node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
base=http://127.0.0.1:$port
(cd "$tmp/sveltekit" && exec setsid "${run_env[@]}" PORT="$port" HOST=127.0.0.1 node build >"$tmp/server.log" 2>&1) &
spid=$!
for _ in $(seq 150); do
  if node -e 'fetch(process.argv[1]).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))' "$base/api/health"; then break; fi
  kill -0 "$spid" 2>/dev/null || { cat "$tmp/server.log" >&2; fail "node build exited"; }
  sleep 0.2
done
say "node build: listening on $base, $(grep -m1 '^cuda-engine:' "$tmp/server.log" || echo 'engine not started')"
if [ -n "$skip_browser" ]; then echo "examples-test: browser check SKIPPED: $skip_browser"; fi
rm -f "$screenshot"
set +e
(cd "$tmp/sveltekit" && "${run_env[@]}" TMPDIR="$tmp" BASE_URL="$base" SCREENSHOT="$screenshot" CHROMIUM="$chromium" SKIP_BROWSER="$skip_browser" \
  timeout 120 node e2e/e2e.mjs) 2>&1 | sed 's/^/examples-test: /'
e2e_rc=${PIPESTATUS[0]}
set -e
[ "$e2e_rc" = 0 ] || { sed 's/^/examples-test: server: /' "$tmp/server.log" >&2; fail "examples/sveltekit: the end-to-end check (above) exited $e2e_rc"; }
[ -n "$skip_browser" ] || [ -s "$screenshot" ] || fail "no screenshot at $screenshot"

# 8. SIGTERM: adapter-node closes the server, the app closes the engine, the process exits.
kill -TERM -- "-$spid"
for _ in $(seq 75); do kill -0 "$spid" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$spid" 2>/dev/null; then fail "node build did not exit within 15 s of SIGTERM"; fi
set +e
wait "$spid"
src=$?
set -e
spid=
say "node build: exited $src after SIGTERM"
# Nothing this test started may be left (the browser's profile and the servers live under $tmp).
left=$(for p in /proc/[0-9]*; do
  [ "${p#/proc/}" != "$$" ] && tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$tmp" && echo "${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline" | cut -c1-160)"
done || true)
[ -z "$left" ] || fail "processes left behind:"$'\n'"$left"

if [ -n "$skip_browser" ]; then
  echo "examples-test: SKIPPED the browser check: $skip_browser"
  say "ok in $(($(date +%s) - t0)) s (browser SKIPPED, no screenshot)"
else
  say "ok in $(($(date +%s) - t0)) s; screenshot: $screenshot"
fi
