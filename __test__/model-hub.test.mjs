// Model provisioning from a Hugging Face hub (crates/core/src/model/hub.rs,
// fetchModel, EngineOptions.model as a repository id, bin/cuda-engine.mjs),
// against the local fake hub of tests/hub_server.mjs on 127.0.0.1 — which
// the real client, huggingface_hub's snapshot_download, is run against too.
// No test here reaches the network: HF_ENDPOINT points at 127.0.0.1 (a
// closed port when no server is meant) or HF_HUB_OFFLINE=1 is set.
// Needs the model (`bash scripts/fetch-model.sh`); huggingface_hub (pinned
// in scripts/test.sh) for the interoperability tests, which print SKIPPED
// when it cannot be imported.
import test from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { addon, rejection } from './helpers.mjs'
import { startHubServer } from '../tests/hub_server.mjs'

const { Engine, fetchModel } = addon
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
const REPO = 'sentence-transformers/all-MiniLM-L6-v2'
const FOLDER = 'models--sentence-transformers--all-MiniLM-L6-v2'
const run = promisify(execFile)
assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')

// Nothing here may touch the user's cache or the real hub.
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-engine-hub-'))
for (const k of ['HF_HUB_OFFLINE', 'HF_TOKEN', 'HF_HOME', 'CUDA_ENGINE_MODEL', 'HUGGINGFACE_HUB_CACHE', 'XDG_CACHE_HOME']) delete process.env[k]
process.env.HF_ENDPOINT = 'http://127.0.0.1:9'
process.env.HF_HUB_CACHE = path.join(tmp, 'default-cache')

const hub = await startHubServer({ modelDir, repo: REPO })
test.after(async () => {
  await hub.close()
  fs.rmSync(tmp, { recursive: true, force: true })
})
const weights = hub.files.get('model.safetensors')
const LOADER_FILES = ['config.json', 'modules.json', 'sentence_bert_config.json', 'tokenizer.json', '1_Pooling/config.json', 'model.safetensors']

let n = 0
const freshCache = () => path.join(tmp, `cache-${++n}`)
const repoDir = (cache) => path.join(cache, FOLDER)
const sha256 = (file) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
const walk = (dir) => (fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true }).map(String).sort() : [])

/** Run with HF_* env vars set for the duration of `fn` (the addon reads the process environment). */
async function withEnv(vars, fn) {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  for (const [k, v] of Object.entries(vars)) v === undefined ? delete process.env[k] : (process.env[k] = v)
  try {
    return await fn()
  } finally {
    for (const [k, v] of Object.entries(saved)) v === undefined ? delete process.env[k] : (process.env[k] = v)
  }
}

// --- huggingface_hub, the real client ---------------------------------------
const PY = process.env.PYTHON ?? 'python3'
const pyEnv = (extra = {}) => ({
  ...process.env,
  HF_HUB_DISABLE_TELEMETRY: '1',
  HF_HUB_DISABLE_PROGRESS_BARS: '1',
  HF_HUB_DISABLE_XET: '1',
  HF_HUB_ENABLE_HF_TRANSFER: '0',
  ...extra,
})
let hfVersion = null
let hfWhyNot = ''
try {
  hfVersion = (await run(PY, ['-c', 'import huggingface_hub; print(huggingface_hub.__version__)'], { env: pyEnv() })).stdout.trim()
} catch (e) {
  hfWhyNot = `huggingface_hub cannot be imported by ${PY} (pip install huggingface_hub==1.33.0): ${String(e.stderr || e.message).trim().split('\n').pop()}`
}
/** Run a Python snippet that prints one JSON line; returns it parsed. */
async function py(code, env = {}) {
  const { stdout } = await run(PY, ['-c', code], { env: pyEnv(env), maxBuffer: 1 << 24 })
  return JSON.parse(stdout.trim().split('\n').pop())
}
function needHf(t) {
  if (hfVersion) return true
  console.log(`SKIPPED: ${t.name}: ${hfWhyNot}`)
  t.skip(hfWhyNot)
  return false
}

let reference // the local directory's embedding of a fixed text
async function embedWith(model, env) {
  return withEnv(env, async () => {
    const engine = await Engine.open({ model, device: 'cpu' })
    try {
      const v = await engine.embed('The quick brown fox jumps over the lazy dog.')
      const h = await engine.health()
      return { v: Array.from(v), name: h.model?.name }
    } finally {
      await engine.close()
    }
  })
}
test.before(async () => {
  reference = (await embedWith(modelDir, {})).v
})

test('the fake hub satisfies huggingface_hub: snapshot_download succeeds and its cache is ours to read offline', async (t) => {
  if (!needHf(t)) return
  const cache = freshCache()
  hub.reset()
  const r = await py(`
import json, os
from huggingface_hub import snapshot_download
p = snapshot_download(${JSON.stringify(REPO)}, endpoint=${JSON.stringify(hub.endpoint)}, cache_dir=${JSON.stringify(cache)})
print(json.dumps({"path": p, "files": sorted(os.path.relpath(os.path.join(d, f), p) for d, _, fs in os.walk(p) for f in fs)}))
`)
  t.diagnostic(`huggingface_hub ${hfVersion}: ${hub.log.length} requests`)
  assert.equal(r.path, path.join(repoDir(cache), 'snapshots', hub.commit))
  assert.deepEqual(r.files, [...hub.files.keys()].sort(), 'every file of the repository')
  assert.equal(sha256(path.join(r.path, 'model.safetensors')), weights.sha256)
  // It used the hub's layout: the API, HEAD on resolve, the LFS redirect to the "CDN" host.
  assert.ok(hub.log.some((e) => e.method === 'HEAD' && e.url.includes('/resolve/') && e.status === 302))
  assert.ok(hub.log.some((e) => e.method === 'GET' && e.url.startsWith('/cdn-lfs/') && e.host.startsWith('localhost:')))

  // Our reader takes huggingface_hub's cache, offline, without a connection.
  hub.reset()
  const f = await withEnv({ HF_HUB_OFFLINE: '1' }, () => fetchModel(null, { dir: cache, endpoint: hub.endpoint }))
  assert.deepEqual(f, { path: r.path, downloaded: [], cached: true })
  const got = await embedWith(REPO, { HF_HUB_OFFLINE: '1', HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint })
  assert.deepEqual(got.v, reference)
  assert.equal(got.name, 'all-MiniLM-L6-v2')
  assert.equal(hub.connections, 0, 'offline: no connection')
})

let ours // { cache, path }: the cache our downloader wrote (later tests read it)
test('fetchModel downloads the loader files into the HF cache layout; a second run makes no request; the id embeds like the local directory', async (t) => {
  const cache = freshCache()
  hub.reset()
  const t0 = performance.now()
  const r = await fetchModel(REPO, { dir: cache, endpoint: hub.endpoint })
  const ms = performance.now() - t0
  t.diagnostic(`downloaded ${r.downloaded.length} files (${(weights.size / 1e6).toFixed(1)} MB of weights) in ${ms.toFixed(0)} ms from 127.0.0.1`)
  const snap = path.join(repoDir(cache), 'snapshots', hub.commit)
  assert.equal(r.path, snap)
  assert.equal(r.cached, false)
  assert.deepEqual([...r.downloaded].sort(), [...LOADER_FILES].sort())
  // The layout huggingface_hub writes: blobs named by etag, relative links, refs/main.
  assert.equal(fs.readFileSync(path.join(repoDir(cache), 'refs/main'), 'utf8'), hub.commit)
  for (const rel of LOADER_FILES) {
    const f = hub.files.get(rel)
    const link = path.join(snap, rel)
    assert.ok(fs.lstatSync(link).isSymbolicLink(), rel)
    const target = fs.readlinkSync(link)
    assert.ok(!path.isAbsolute(target) && target.endsWith(`blobs/${f.sha256 ?? f.oid}`), `${rel} -> ${target}`)
    assert.deepEqual(fs.readFileSync(link), f.data, rel)
  }
  assert.deepEqual(walk(path.join(repoDir(cache), 'blobs')).filter((f) => f.endsWith('.incomplete')), [])
  // The weights went through the LFS redirect; small files through the relative redirect.
  assert.ok(hub.log.some((e) => e.method === 'GET' && e.url.startsWith(`/cdn-lfs/${weights.sha256}`) && e.status === 200))
  assert.ok(hub.log.some((e) => e.url.startsWith('/api/resolve-cache/')))
  assert.ok(hub.log.every((e) => e.auth === null), 'no token: no Authorization header')

  hub.reset()
  const again = await fetchModel(REPO, { dir: cache, endpoint: hub.endpoint })
  assert.deepEqual(again, { path: snap, downloaded: [], cached: true })
  assert.equal(hub.log.length, 0, 'a cached model makes no request')
  assert.equal(hub.connections, 0)

  const got = await embedWith(REPO, { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint })
  assert.deepEqual(got.v, reference, 'the same vector as the local directory')
  assert.equal(got.name, 'all-MiniLM-L6-v2')
  assert.equal(hub.connections, 0)
  ours = { cache, path: snap }
})

test('huggingface_hub reads the cache our downloader wrote, offline', async (t) => {
  assert.ok(ours, 'needs the previous test')
  if (!needHf(t)) return
  const r = await py(`
import json
from huggingface_hub import snapshot_download, try_to_load_from_cache
p = snapshot_download(${JSON.stringify(REPO)}, cache_dir=${JSON.stringify(ours.cache)})
w = try_to_load_from_cache(${JSON.stringify(REPO)}, "model.safetensors", cache_dir=${JSON.stringify(ours.cache)})
c = try_to_load_from_cache(${JSON.stringify(REPO)}, "1_Pooling/config.json", cache_dir=${JSON.stringify(ours.cache)})
print(json.dumps({"path": p, "weights": w, "pooling": c}))
`, { HF_HUB_OFFLINE: '1', HF_ENDPOINT: 'http://127.0.0.1:9' })
  assert.equal(r.path, ours.path)
  assert.equal(r.weights, path.join(ours.path, 'model.safetensors'))
  assert.equal(sha256(r.weights), weights.sha256)
  assert.equal(r.pooling, path.join(ours.path, '1_Pooling/config.json'))
})

test('a connection cut mid-file is resumed with a Range request; HF_TOKEN goes to the hub host only', async (t) => {
  const cache = freshCache()
  hub.reset()
  hub.cut = { file: 'model.safetensors', after: 24 << 20, times: 1 }
  const r = await withEnv({ HF_TOKEN: 'hf_test_token' }, () => fetchModel(REPO, { dir: cache, endpoint: hub.endpoint }))
  assert.ok(r.downloaded.includes('model.safetensors'))
  assert.equal(sha256(path.join(r.path, 'model.safetensors')), weights.sha256)
  const gets = hub.log.filter((e) => e.method === 'GET' && e.url.startsWith('/cdn-lfs/'))
  assert.equal(gets.length, 2, JSON.stringify(gets))
  assert.equal(gets[0].range, null)
  const start = Number(/^bytes=(\d+)-$/.exec(gets[1].range)?.[1])
  assert.ok(start > 0 && start <= 24 << 20, `resumed at ${gets[1].range}`)
  assert.equal(gets[1].status, 206)
  t.diagnostic(`cut at ${24 << 20} bytes sent, resumed from byte ${start}`)
  const onHub = hub.log.filter((e) => e.host.startsWith('127.0.0.1:'))
  assert.ok(onHub.length > 0 && onHub.every((e) => e.auth === 'Bearer hf_test_token'), 'the token on every hub request')
  assert.ok(gets.every((e) => e.auth === null), 'never the token to the CDN host')
})

test('a download killed mid-file leaves no half file where a reader looks, and the next run resumes it', async (t) => {
  const cache = freshCache()
  hub.reset()
  hub.throttle = { file: 'model.safetensors', bytesPerTick: 256 << 10, tickMs: 10 }
  const child = spawn(process.execPath, ['-e', `
    require(${JSON.stringify(path.join(root, 'index.js'))})
      .fetchModel(${JSON.stringify(REPO)}, { dir: ${JSON.stringify(cache)} })
      .then(() => process.exit(3), (e) => { console.error(e.code, e.message); process.exit(4) })
  `], { env: { ...process.env, HF_ENDPOINT: hub.endpoint }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const deadline = Date.now() + 60_000
  while ((hub.servedBytes['model.safetensors'] ?? 0) < 16 << 20) {
    assert.ok(Date.now() < deadline, `the child did not get far enough: ${stderr}`)
    assert.equal(child.exitCode, null, `the child exited early: ${stderr}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  child.kill('SIGKILL')
  assert.deepEqual(await exited, { code: null, signal: 'SIGKILL' })
  hub.throttle = null

  const blobs = path.join(repoDir(cache), 'blobs')
  const partial = path.join(blobs, `${weights.sha256}.incomplete`)
  const have = fs.statSync(partial).size
  assert.ok(have > 0 && have < weights.size, `partial file of ${have} bytes`)
  assert.ok(!fs.existsSync(path.join(blobs, weights.sha256)), 'no finished-looking blob')
  assert.ok(!walk(path.join(repoDir(cache), 'snapshots')).some((f) => f.endsWith('model.safetensors')), 'no weights in the snapshot')
  assert.ok(!fs.existsSync(path.join(repoDir(cache), 'refs/main')), 'no ref to an incomplete snapshot')
  // A reader finds no model there (offline: the cache only).
  const e = await withEnv({ HF_HUB_OFFLINE: '1' }, () => rejection(fetchModel(REPO, { dir: cache })))
  assert.equal(e.code, 'E_MODEL')

  hub.reset()
  const r = await fetchModel(REPO, { dir: cache, endpoint: hub.endpoint })
  assert.deepEqual(r.downloaded, ['model.safetensors'], 'the small files were complete already')
  const get = hub.log.find((x) => x.method === 'GET' && x.url.startsWith('/cdn-lfs/'))
  assert.equal(get.range, `bytes=${have}-`)
  assert.equal(get.status, 206)
  assert.equal(hub.servedBytes['model.safetensors'], weights.size - have, 'only the rest was sent')
  assert.equal(sha256(path.join(r.path, 'model.safetensors')), weights.sha256)
  assert.ok(!fs.existsSync(partial))
  t.diagnostic(`killed after ${have} of ${weights.size} bytes; the next run fetched the other ${weights.size - have}`)
})

test('a corrupted file is E_MODEL naming it, and nothing of it stays in the cache', async (t) => {
  const cache = freshCache()
  hub.reset()
  hub.corrupt.add('model.safetensors')
  const e = await rejection(fetchModel(REPO, { dir: cache, endpoint: hub.endpoint }))
  assert.equal(e.code, 'E_MODEL')
  assert.match(e.message, /model\.safetensors/)
  assert.match(e.message, /sha256 mismatch/)
  const files = walk(repoDir(cache))
  assert.ok(!files.some((f) => f.includes(weights.sha256) && f.startsWith('blobs')), files.join('\n'))
  assert.ok(!files.some((f) => f.endsWith('model.safetensors')), files.join('\n'))
  assert.ok(!fs.existsSync(path.join(repoDir(cache), 'refs/main')))
  // Engine.open with the id, offline, finds nothing to load (no crash, no half model).
  const open = await withEnv({ HF_HUB_OFFLINE: '1', HF_HUB_CACHE: cache }, () => rejection(Engine.open({ model: REPO, device: 'cpu' })))
  assert.equal(open.code, 'E_MODEL')
  assert.match(open.message, /HF_HUB_OFFLINE/)
  if (hfVersion) {
    const r = await py(`
import json
from huggingface_hub import try_to_load_from_cache
print(json.dumps(try_to_load_from_cache(${JSON.stringify(REPO)}, "model.safetensors", cache_dir=${JSON.stringify(cache)})))
`, { HF_HUB_OFFLINE: '1' })
    assert.equal(r, null, 'huggingface_hub finds no weights either')
  }
  hub.corrupt.clear()
  const ok = await fetchModel(REPO, { dir: cache, endpoint: hub.endpoint })
  assert.deepEqual(ok.downloaded, ['model.safetensors'])
})

test('HF_HUB_OFFLINE=1 never connects: fetchModel and Engine.open with an uncached id are E_MODEL saying offline', async () => {
  const cache = freshCache()
  hub.reset()
  await withEnv({ HF_HUB_OFFLINE: '1', HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint }, async () => {
    const e = await rejection(fetchModel(REPO, { dir: cache, endpoint: hub.endpoint }))
    assert.equal(e.code, 'E_MODEL')
    assert.match(e.message, /HF_HUB_OFFLINE/)
    assert.match(e.message, /npx cuda-engine fetch-model/)
    const o = await rejection(Engine.open({ model: REPO, device: 'cpu' }))
    assert.equal(o.code, 'E_MODEL')
    assert.match(o.message, /HF_HUB_OFFLINE/)
  })
  assert.equal(hub.connections, 0)
  assert.ok(!fs.existsSync(repoDir(cache)), 'nothing written')
})

test('a path-like or non-id model value that does not exist is E_MODEL without any connection', async () => {
  hub.reset()
  const cache = freshCache()
  await withEnv({ HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint }, async () => {
    for (const model of ['./sentence-transformers/all-MiniLM-L6-v2', '../nope/model', '/nonexistent/org/name', 'all-MiniLM-L6-v2', 'a/b/c', '~/models/x', 'org/name@main']) {
      const e = await rejection(Engine.open({ model, device: 'cpu' }))
      assert.equal(e.code, 'E_MODEL', model)
      assert.match(e.message, /does not exist/, model)
      assert.ok(e.message.includes(model), `${model}: ${e.message}`)
    }
    const env = await withEnv({ CUDA_ENGINE_MODEL: './missing/model' }, () => rejection(Engine.open({ device: 'cpu' })))
    assert.equal(env.code, 'E_MODEL')
    assert.match(env.message, /CUDA_ENGINE_MODEL/)
  })
  assert.equal(hub.connections, 0)
  // An id the hub does not have: one request, E_MODEL saying so.
  const e = await withEnv({ HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint }, () => rejection(Engine.open({ model: 'no-such-org/no-such-model', device: 'cpu' })))
  assert.equal(e.code, 'E_MODEL')
  assert.match(e.message, /404 RepoNotFound/)
  assert.deepEqual(hub.log.map((x) => x.url), ['/api/models/no-such-org/no-such-model/revision/main?blobs=true'])
})

test('fetchModel checks its arguments (unknown keys, types, ids) before any request', async () => {
  hub.reset()
  const cases = [
    [[REPO, { dri: '/tmp/x' }], /`options.dri` is not an option \(did you mean `dir`\?\)/],
    [[REPO, { dir: 3 }], /`options.dir` must be a string/],
    [[REPO, { revision: '' }], /`options.revision` is an empty string/],
    [[REPO, { revision: '../x', endpoint: hub.endpoint, dir: freshCache() }], /revision/],
    [[REPO, 'x'], /`options` must be an object/],
    [['./models/x'], /not a Hugging Face repository id/],
    [['all-MiniLM-L6-v2'], /not a Hugging Face repository id/],
    [[42], /`name` must be a Hugging Face repository id string/],
    [[Symbol('name')], /`name` is a symbol/],
    [[{ get x() { throw new Error('boom') } }], /`name.x`: reading a property threw: Error: boom/],
    [[REPO, { get dir() { throw new Error('boom') } }], /`options.dir`: reading a property threw/],
    [[REPO, { endpoint: 'ftp://127.0.0.1/x', dir: freshCache() }], /http:\/\/ or https:\/\//],
  ]
  for (const [args, re] of cases) {
    const e = await rejection(fetchModel(...args))
    assert.equal(e.code, 'E_INVALID_ARG', `${args.map(String)}: ${e.message}`)
    assert.match(e.message, re)
  }
  assert.equal(hub.connections, 0)
})

test('npx cuda-engine fetch-model prints the model directory', async () => {
  assert.ok(ours, 'needs the download test')
  const cli = path.join(root, 'bin/cuda-engine.mjs')
  hub.reset()
  const cached = await run(process.execPath, [cli, 'fetch-model', '--dir', ours.cache, '--endpoint', hub.endpoint])
  assert.equal(cached.stdout, `${ours.path}\n`)
  assert.match(cached.stderr, /already in the cache/)
  assert.equal(hub.connections, 0)

  const cache = freshCache()
  const fresh = await run(process.execPath, [cli, 'fetch-model', REPO, `--dir=${cache}`], { env: { ...process.env, HF_ENDPOINT: hub.endpoint } })
  const printed = fresh.stdout.trim()
  assert.equal(printed, path.join(repoDir(cache), 'snapshots', hub.commit))
  assert.ok(fs.existsSync(path.join(printed, 'model.safetensors')))
  assert.match(fresh.stderr, /downloaded 6 file/)

  const bad = await rejection(run(process.execPath, [cli, 'fetch-model', '--dri', 'x']))
  assert.equal(bad.code, 2)
  const offline = await rejection(run(process.execPath, [cli, 'fetch-model', '--dir', freshCache()], { env: { ...process.env, HF_HUB_OFFLINE: '1' } }))
  assert.equal(offline.code, 1)
  assert.match(offline.stderr, /E_MODEL: .*HF_HUB_OFFLINE/)
})

test('the cuda-worker binary resolves an id the same way: downloads it into the cache on first use', async () => {
  const bin = ['release', 'debug'].map((p) => path.join(root, 'target', p, 'cuda-worker')).find((p) => fs.existsSync(p))
  assert.ok(bin, 'cuda-worker is not built: run cargo build --release -p cuda-worker')
  const cache = freshCache()
  hub.reset()
  const child = spawn(bin, ['--options', JSON.stringify({ model: REPO, device: 'cpu' })], {
    env: { ...process.env, HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  child.stdin.end(JSON.stringify({ type: 'embedding', payload: { texts: ['The quick brown fox jumps over the lazy dog.'] } }))
  const code = await new Promise((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, err)
  const r = JSON.parse(out)
  assert.equal(r.ok, true, out)
  const v = r.result.embeddings[0]
  assert.equal(v.length, reference.length)
  assert.ok(v.every((x, i) => Math.abs(x - reference[i]) < 1e-6), 'the same vector as in-process')
  assert.ok(fs.existsSync(path.join(repoDir(cache), 'snapshots', hub.commit, 'model.safetensors')))
  assert.ok(hub.log.some((e) => e.url.startsWith('/cdn-lfs/')), 'the worker downloaded the weights')
  assert.equal(err.includes('downloading'), false, 'no progress line when stderr is not a terminal')
})

test('with no model anywhere, embed is E_MODEL naming fetch-model and the env vars', async () => {
  const home = path.join(tmp, 'empty-home')
  fs.mkdirSync(home, { recursive: true })
  const env = { ...process.env, HOME: home, HF_HUB_CACHE: path.join(home, 'hub'), HF_HUB_OFFLINE: '1' }
  delete env.CUDA_ENGINE_MODEL
  const { stdout } = await run(process.execPath, ['-e', `
    const { Engine } = require(${JSON.stringify(path.join(root, 'index.js'))})
    Engine.open({ device: 'cpu' }).then((e) => e.embed('x')).then(
      () => console.log(JSON.stringify({ ok: true })),
      (err) => console.log(JSON.stringify({ code: err.code, message: err.message })))
  `], { cwd: home, env })
  const r = JSON.parse(stdout)
  assert.equal(r.code, 'E_MODEL')
  for (const needle of ['npx cuda-engine fetch-model', 'CUDA_ENGINE_MODEL', 'HF_HUB_CACHE', 'HF_HOME', 'HF_ENDPOINT', 'HF_HUB_OFFLINE']) {
    assert.ok(r.message.includes(needle), `${needle} in ${r.message}`)
  }
})
