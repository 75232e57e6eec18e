#!/usr/bin/env bash
# What a user's CI does with the published packages (issue 11): a local npm
# registry (verdaccio, pinned, no uplinks: nothing can come from elsewhere),
# cuda-engine and its platform package published to it, then in an empty
# project with no cargo or rustc on PATH: `npm install cuda-engine` (timed),
# health(), embed() with the test model, submit through the bundled
# cuda-worker in persistent mode, `npx cuda-worker`, `npx cuda-service`
# answering /api/v1/health, import and require, `tsc --strict --noEmit` of a
# file using the API, the same install with --ignore-scripts, and the error
# when the platform package is missing. Called by scripts/test.sh after the
# builds; on its own it builds what is missing.
#   bash scripts/test-registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
VERDACCIO_VERSION=6.8.0 # 6.9+ needs Node 22 (../shared/notes/node-ecosystem.md)
model=${CUDA_ENGINE_MODEL:-$repo/models/all-MiniLM-L6-v2}
[ -f "$model/config.json" ] || bash scripts/fetch-model.sh
[ -x node_modules/.bin/tsc ] || npm ci --no-audit --no-fund
[ -x examples/ts/node_modules/.bin/tsc ] || (cd examples/ts && npm ci --no-audit --no-fund)

t0=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cuda-registry-XXXXXX")
vpid=
cleanup() {
  # verdaccio runs in its own process group (setsid): end the group.
  if [ -n "$vpid" ]; then kill -TERM -- "-$vpid" 2>/dev/null || true; sleep 0.2; kill -KILL -- "-$vpid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# 1. The tarballs (builds are no-ops after scripts/test.sh's).
ARTIFACTS_SKIP_BUILD=${ARTIFACTS_SKIP_BUILD:-0} bash scripts/artifacts.sh "$tmp/dist" | sed 's/^/registry-test: /'
version=$(node -p 'require("./package.json").version')

# 2. verdaccio, installed once into a cache folder (npm registry, pinned).
vdir=${XDG_CACHE_HOME:-$HOME/.cache}/cuda-engine/verdaccio-$VERDACCIO_VERSION
if [ ! -f "$vdir/node_modules/verdaccio/package.json" ]; then
  mkdir -p "$vdir"
  cat >"$vdir/package.json" <<JSON
{ "private": true, "dependencies": { "verdaccio": "$VERDACCIO_VERSION" }, "overrides": { "node-fetch": "2.7.0" } }
JSON
  (cd "$vdir" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
fi
port=$(node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
reg="http://127.0.0.1:$port/"
mkdir -p "$tmp/verdaccio/storage"
cat >"$tmp/verdaccio/config.yaml" <<YAML
storage: $tmp/verdaccio/storage
auth:
  htpasswd:
    file: $tmp/verdaccio/htpasswd
    max_users: 10
uplinks: {}
# A publish is the tarball base64 in JSON (~1.4x): verdaccio's default 10mb
# refuses the platform package (the .node and cuda-worker, 8 MB packed).
max_body_size: 200mb
packages:
  '**':
    access: \$all
    publish: \$authenticated
log: { type: stdout, format: pretty, level: warn }
YAML
setsid node "$vdir/node_modules/verdaccio/bin/verdaccio" --config "$tmp/verdaccio/config.yaml" \
  --listen "127.0.0.1:$port" >"$tmp/verdaccio/log" 2>&1 &
vpid=$!
for _ in $(seq 100); do
  if node -e 'fetch(process.argv[1] + "-/ping").then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$reg"; then break; fi
  kill -0 "$vpid" 2>/dev/null || { cat "$tmp/verdaccio/log" >&2; exit 1; }
  sleep 0.2
done
token=$(node -e '
  fetch(process.argv[1] + "-/user/org.couchdb.user:ci", { method: "PUT", headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "ci", password: "ci-password-1" }) })
    .then((r) => r.json()).then((j) => { if (!j.token) throw new Error(JSON.stringify(j)); console.log(j.token) })' "$reg")

# npm talks to this registry only: its own config, an empty cache, and a
# dead proxy for every other host.
cat >"$tmp/npmrc" <<RC
registry=$reg
//127.0.0.1:$port/:_authToken=$token
proxy=http://127.0.0.1:9/
https-proxy=http://127.0.0.1:9/
noproxy=127.0.0.1
audit=false
fund=false
update-notifier=false
RC
export NPM_CONFIG_USERCONFIG=$tmp/npmrc npm_config_cache=$tmp/npm-cache
for f in "$tmp/dist"/cuda-engine-linux-*.tgz "$tmp/dist/cuda-engine-$version.tgz"; do
  npm publish "$f" --registry "$reg" --loglevel=error >/dev/null
  echo "registry-test: published $(basename "$f") ($(stat -c %s "$f") bytes)"
done

# 3. A PATH with node and npm and the base system, without cargo or rustc.
source "$repo/scripts/no-cargo-path.sh"
userpath=$(no_cargo_path "$tmp") || { echo "registry-test: cannot build a PATH without cargo/rustc" >&2; exit 1; }

app=$tmp/app
mkdir -p "$app"
echo '{ "name": "ci-app", "version": "1.0.0", "private": true }' >"$app/package.json"
i0=$(date +%s%N)
(cd "$app" && PATH=$userpath npm install "cuda-engine@$version" --registry "$reg" --loglevel=error >/dev/null)
i1=$(date +%s%N)
install_ms=$(((i1 - i0) / 1000000))
echo "registry-test: npm install cuda-engine@$version: ${install_ms} ms"
[ -d "$app/node_modules/cuda-engine-linux-x64-gnu" ] || { echo "registry-test: the platform package was not installed" >&2; exit 1; }

# 4. The checks, run as the user would, with the model from a local folder.
cat >"$app/check.cjs" <<'JS'
const assert = require('node:assert/strict')
const path = require('node:path')
const { embed, health, submit, Engine } = require('cuda-engine')
;(async () => {
  const h = await health()
  assert.ok(['ok', 'degraded'].includes(h.status), JSON.stringify(h))
  assert.equal(h.model?.name, 'all-MiniLM-L6-v2')
  const v = await embed('The installed package embeds without a Rust toolchain.')
  assert.ok(v instanceof Float32Array && v.length === 384, `embedding of length ${v.length}`)
  const echo = await submit({ type: 'echo', payload: { hi: 1 } })
  assert.deepEqual(echo.result, { hi: 1 })
  const engine = await Engine.open({ worker: { mode: 'persistent' } })
  const r = await engine.submit({ type: 'echo', payload: { through: 'worker' } }, { target: 'worker', timeoutMs: 30000 })
  assert.equal(r.backend, 'worker')
  assert.deepEqual(r.result, { through: 'worker' })
  const eh = await engine.health()
  assert.equal(eh.worker.source, 'bundled', JSON.stringify(eh.worker))
  assert.equal(eh.worker.mode, 'persistent')
  assert.equal(eh.worker.path, path.join(path.dirname(require.resolve('cuda-engine-linux-x64-gnu/package.json')), 'cuda-worker'))
  assert.equal(eh.worker.running, true)
  await engine.close()
  console.log(`require: ok (health ${h.status}, embed ${v.length} dims, worker ${eh.worker.source} ${eh.worker.path})`)
})().catch((e) => { console.error(e); process.exit(1) })
JS
cat >"$app/check.mjs" <<'JS'
import assert from 'node:assert/strict'
import cudaEngine, { embed, errorCodes, findCudaWorkerPath } from 'cuda-engine'
assert.equal(typeof cudaEngine.embed, 'function')
assert.ok(errorCodes().some((e) => e.code === 'E_WORKER_NOT_FOUND'))
assert.match(findCudaWorkerPath(), /node_modules\/cuda-engine-linux-x64-gnu\/cuda-worker$/)
const [a, b] = await embed(['import works', 'import works'])
assert.deepEqual(Array.from(a), Array.from(b))
console.log('import: ok')
JS
cat >"$app/check.ts" <<'TS'
import { Engine, embed, health, submit } from 'cuda-engine'
import type { EngineOptions, ErrorCode, Health, JobResult } from 'cuda-engine'

const options: EngineOptions = { worker: { mode: 'persistent', poolSize: 1 }, device: 'auto' }
export async function run(): Promise<number> {
  const engine: Engine = await Engine.open(options)
  const h: Health = await engine.health()
  const r: JobResult = await submit({ type: 'echo', payload: { x: 1 } }, { target: 'worker', timeoutMs: 1000 })
  const v: Float32Array = await embed('typed')
  const vs: Float32Array[] = await embed(['a', 'b'], { normalize: true })
  const code: ErrorCode = 'E_WORKER_NOT_FOUND'
  await engine.close({ drainMs: 10 })
  return v.length + vs.length + (h.worker.source === 'bundled' ? 1 : 0) + (r.ok ? 1 : 0) + code.length + (await health()).queue.depth
}
TS
(
  cd "$app"
  export PATH=$userpath CUDA_ENGINE_MODEL=$model HF_HUB_OFFLINE=1
  unset CUDA_WORKER_PATH NAPI_RS_NATIVE_LIBRARY_PATH
  node check.cjs
  node check.mjs
  "$repo/examples/ts/node_modules/.bin/tsc" --strict --noEmit --target es2022 --module nodenext --moduleResolution nodenext \
    --typeRoots "$repo/examples/ts/node_modules/@types" --types node check.ts
  echo "tsc --strict --noEmit: ok"

  # npx cuda-worker: the shipped binary, its output and exit status.
  npx --no-install cuda-worker --version | grep -q . || { echo "npx cuda-worker --version printed nothing" >&2; exit 1; }
  out=$(echo '{"type":"echo","payload":{"via":"npx"}}' | npx --no-install cuda-worker)
  node -e 'const r = JSON.parse(process.argv[1]); if (JSON.stringify(r.result) !== "{\"via\":\"npx\"}") throw new Error(process.argv[1])' "$out"
  set +e
  npx --no-install cuda-worker --no-such-flag 2>/dev/null; got=$?
  node_modules/cuda-engine-linux-x64-gnu/cuda-worker --no-such-flag 2>/dev/null; want=$?
  set -e
  [ "$got" = "$want" ] && [ "$got" != 0 ] || { echo "npx cuda-worker exit $got, the binary's $want" >&2; exit 1; }
  echo "npx cuda-worker: ok (echo, exit status $got passed through)"

  # npx cuda-service --port 0: the {"listening":...} line, then /api/v1/health.
  node - <<'JS'
const { spawn } = require('node:child_process')
const svc = spawn('npx', ['--no-install', 'cuda-service', '--port', '0', '--no-log'], { stdio: ['ignore', 'pipe', 'inherit'], detached: true })
const kill = (sig) => { try { process.kill(-svc.pid, sig) } catch {} }
const timer = setTimeout(() => { console.error('cuda-service did not answer in 60 s'); kill('SIGKILL'); process.exit(1) }, 60000)
let buf = ''
svc.stdout.on('data', async (d) => {
  buf += d
  const line = buf.split('\n').find((l) => l.includes('"listening"'))
  if (!line || svc.done) return
  svc.done = true
  try {
    const { listening } = JSON.parse(line)
    const res = await fetch(`${listening}/api/v1/health`)
    const body = await res.json()
    if (res.status !== 200 || !body.status) throw new Error(`${res.status} ${JSON.stringify(body)}`)
    console.log(`npx cuda-service: ok (${listening}/api/v1/health -> ${res.status}, status ${body.status})`)
    kill('SIGTERM')
    svc.on('exit', () => { clearTimeout(timer); process.exit(0) })
  } catch (e) { console.error(e); kill('SIGKILL'); process.exit(1) }
})
svc.on('exit', (code) => { if (!svc.done) { console.error(`cuda-service exited ${code}`); process.exit(1) } })
JS

  # No install script anywhere in the installed tree.
  node -e '
    const fs = require("node:fs"), path = require("node:path")
    for (const d of fs.readdirSync("node_modules")) {
      const p = path.join("node_modules", d, "package.json"); if (!fs.existsSync(p)) continue
      const s = JSON.parse(fs.readFileSync(p, "utf8")).scripts || {}
      for (const k of ["preinstall", "install", "postinstall"]) if (s[k]) throw new Error(`${d} has an ${k} script`)
    }'
)

# 5. --ignore-scripts gives the same install.
app2=$tmp/app2
mkdir -p "$app2"
cp "$app/package.json" "$app/check.cjs" "$app2/"
(cd "$app2" && PATH=$userpath npm install "cuda-engine@$version" --ignore-scripts --registry "$reg" --loglevel=error >/dev/null)
listing() { (cd "$1/node_modules" && find . -type f -printf '%p %m %s\n' | grep -v '^./.package-lock.json' | sort); }
diff <(listing "$app") <(listing "$app2") || { echo "registry-test: --ignore-scripts installs something else" >&2; exit 1; }
(cd "$app2" && PATH=$userpath CUDA_ENGINE_MODEL=$model node check.cjs >/dev/null)
echo "registry-test: npm install --ignore-scripts: the same files, and it works"

# 6. Without the platform package: an error that names it and the fix.
rm -rf "$app2/node_modules/cuda-engine-linux-x64-gnu"
msg=$(cd "$app2" && PATH=$userpath node -e 'try { require("cuda-engine"); console.log("loaded") } catch (e) { console.log(e.message) }')
case "$msg" in
  *"cuda-engine-linux-x64-gnu is not installed"*"npm install cuda-engine-linux-x64-gnu@$version"*) ;;
  *) echo "registry-test: missing platform package gave: $msg" >&2; exit 1 ;;
esac
msg=$(cd "$app2" && PATH=$userpath npx --no-install cuda-worker --version 2>&1 || true)
case "$msg" in
  *"npm install cuda-engine-linux-x64-gnu@$version"*) ;;
  *) echo "registry-test: npx cuda-worker without the platform package gave: $msg" >&2; exit 1 ;;
esac
echo "registry-test: without the platform package: $(echo "$msg" | cut -c1-160)..."

echo "registry-test: ok in $(($(date +%s) - t0)) s (install ${install_ms} ms)"
