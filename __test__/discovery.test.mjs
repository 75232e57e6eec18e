// Worker discovery from JS (docs/discovery.md) and routing to the worker it
// finds: CUDA_WORKER_PATH, <baseDir>/cuda-worker/cuda-worker, the bundled
// worker next to the loaded .node (the npm platform package), restarts.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
import { addon, rejection } from './helpers.mjs'

const { Engine, submit, findCudaWorkerPath, discoveryCandidates, health } = addon
const root = fileURLToPath(new URL('..', import.meta.url))
const workerBin = process.env.CUDA_WORKER_BIN || path.join(root, 'target/release/cuda-worker')
assert.ok(fs.existsSync(workerBin), `cuda-worker is not built at ${workerBin}: run cargo build --release -p cuda-worker`)

/** Run `fn` with CUDA_WORKER_PATH set (or unset with `undefined`), then restore it. */
async function withWorkerEnv(value, fn) {
  const saved = process.env.CUDA_WORKER_PATH
  if (value === undefined) delete process.env.CUDA_WORKER_PATH
  else process.env.CUDA_WORKER_PATH = value
  try {
    return await fn()
  } finally {
    if (saved === undefined) delete process.env.CUDA_WORKER_PATH
    else process.env.CUDA_WORKER_PATH = saved
  }
}

test('CUDA_WORKER_PATH set to the built worker: submit(target worker) runs there', async () => {
  await withWorkerEnv(workerBin, async () => {
    assert.equal(findCudaWorkerPath(), workerBin)
    assert.deepEqual(discoveryCandidates(), [workerBin])
    const r = await submit({ type: 'echo', payload: { x: 1 } }, { target: 'worker' })
    assert.equal(r.backend, 'worker')
    assert.deepEqual(r.result, { x: 1 })
    // With the variable set, types the engine cannot run locally go to the worker.
    const unknown = await rejection(submit({ type: 'transmogrify', payload: {} }))
    assert.equal(unknown.code, 'E_UNKNOWN_TYPE')
    assert.match(unknown.message, /worker|transmogrify/)
    const h = await health()
    assert.deepEqual(h.cuda_path, [workerBin])
    assert.equal(h.worker.path, workerBin)
    assert.equal(h.worker.source, 'env')
  })
})

test('CUDA_WORKER_PATH unset: <baseDir>/cuda-worker/cuda-worker is found', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-discovery-'))
  t.after(() => fs.rmSync(base, { recursive: true, force: true }))
  fs.mkdirSync(path.join(base, 'cuda-worker'))
  const placed = path.join(base, 'cuda-worker', 'cuda-worker')
  fs.copyFileSync(workerBin, placed)
  fs.chmodSync(placed, 0o755)
  await withWorkerEnv(undefined, async () => {
    assert.equal(findCudaWorkerPath({ baseDir: base }), placed)
    const candidates = discoveryCandidates({ baseDir: base })
    assert.equal(candidates[0], placed)
    assert.ok(candidates.includes(path.join(base, 'bin', 'cuda-worker')))
    const engine = await Engine.open({ baseDir: base })
    t.after(() => engine.close())
    const r = await engine.submit({ type: 'echo', payload: 'found' }, { target: 'worker' })
    assert.equal(r.backend, 'worker')
    assert.equal(r.result, 'found')
    const h = await engine.health()
    assert.equal(h.worker.path, placed)
    assert.equal(h.worker.source, 'relative')
    assert.equal(h.cuda_path[0], placed)
    // A directory with nothing to find: null, not an error.
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-discovery-empty-'))
    t.after(() => fs.rmSync(empty, { recursive: true, force: true }))
    const saved = process.env.PATH
    process.env.PATH = empty
    try {
      assert.equal(findCudaWorkerPath({ baseDir: empty }), null)
    } finally {
      process.env.PATH = saved
    }
  })
})

test('CUDA_WORKER_PATH pointing at a missing file: the error names it, nothing else is tried', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-discovery-'))
  t.after(() => fs.rmSync(base, { recursive: true, force: true }))
  // A valid worker sits at a relative candidate: it must NOT be used.
  fs.mkdirSync(path.join(base, 'cuda-worker'))
  fs.copyFileSync(workerBin, path.join(base, 'cuda-worker', 'cuda-worker'))
  fs.chmodSync(path.join(base, 'cuda-worker', 'cuda-worker'), 0o755)
  await withWorkerEnv('/nonexistent/dir/cuda-worker', async () => {
    assert.deepEqual(discoveryCandidates({ baseDir: base }), ['/nonexistent/dir/cuda-worker'])
    let thrown
    try {
      findCudaWorkerPath({ baseDir: base })
    } catch (e) {
      thrown = e
    }
    assert.ok(thrown, 'findCudaWorkerPath throws when CUDA_WORKER_PATH is unusable')
    assert.equal(thrown.code, 'E_WORKER_NOT_FOUND')
    assert.match(thrown.message, /CUDA_WORKER_PATH/)
    const engine = await Engine.open({ baseDir: base })
    t.after(() => engine.close())
    const err = await rejection(engine.submit({ type: 'echo', payload: 1 }, { target: 'worker' }))
    assert.equal(err.code, 'E_WORKER_NOT_FOUND')
    assert.match(err.message, /CUDA_WORKER_PATH=\/nonexistent\/dir\/cuda-worker/)
    assert.doesNotMatch(err.message, new RegExp(base))
  })
})

test('a persistent worker SIGKILLed mid-job: in-flight jobs fail fast, it restarts, restarts is counted', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-kill-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const engine = await Engine.open({ worker: { path: workerBin, mode: 'persistent', timeoutMs: 10000 } })
  t.after(() => engine.close())
  assert.deepEqual((await engine.submit({ type: 'echo', payload: 0 }, { target: 'worker' })).result, 0)
  const before = await engine.health()
  assert.equal(before.worker.running, true)
  const [pid] = before.worker.pids
  assert.ok(pid > 0)
  // Many jobs in flight with a large payload, then kill the process.
  const big = 'x'.repeat(4 << 20)
  const inflight = Array.from({ length: 8 }, (_, i) => engine.submit({ type: 'echo', payload: { i, big } }, { target: 'worker' }).then(() => 'ok', (e) => e))
  process.kill(pid, 'SIGKILL')
  const t0 = performance.now()
  const outcomes = await Promise.all(inflight)
  const failed = outcomes.filter((o) => o !== 'ok')
  assert.ok(failed.length > 0, 'the kill landed while jobs were in flight')
  for (const e of failed) assert.equal(e.code, 'E_WORKER_EXIT', e.message)
  assert.ok(performance.now() - t0 < 1000)
  const next = await engine.submit({ type: 'echo', payload: 'after' }, { target: 'worker' })
  assert.equal(next.result, 'after')
  const after = await engine.health()
  assert.equal(after.worker.restarts, before.worker.restarts + 1)
  assert.notEqual(after.worker.pids[0], pid)
})

test('bundled: the candidate after the relative ones and before PATH is cuda-worker next to the loaded .node', () => {
  const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.endsWith('.node'))
  assert.equal(loaded.length, 1, `one addon loaded: ${loaded}`)
  const bundled = path.join(path.dirname(fs.realpathSync(loaded[0])), 'cuda-worker')
  const saved = process.env.PATH
  process.env.PATH = '/nonexistent-path-dir'
  try {
    const c = withoutEnv(() => discoveryCandidates({ baseDir: '/srv/app' }))
    assert.equal(c.length, 10, c.join('\n'))
    assert.equal(c[7], '/srv/app/../cuda-worker/cuda-worker.exe')
    assert.equal(c[8], bundled)
    assert.equal(c[9], '/nonexistent-path-dir/cuda-worker')
  } finally {
    process.env.PATH = saved
  }
})

function withoutEnv(fn) {
  const saved = process.env.CUDA_WORKER_PATH
  delete process.env.CUDA_WORKER_PATH
  try {
    return fn()
  } finally {
    if (saved !== undefined) process.env.CUDA_WORKER_PATH = saved
  }
}

test('bundled: an addon loaded from a platform package folder finds and runs the cuda-worker beside it (source "bundled")', (t) => {
  const loaded = Object.keys(createRequire(import.meta.url).cache).find((k) => k.endsWith('.node'))
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-bundled-'))
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }))
  // The npm layout: node_modules/cuda-engine-<platform>/{<addon>.node, cuda-worker}.
  const pkgDir = path.join(tmp, 'app', 'node_modules', 'cuda-engine-linux-x64-gnu')
  fs.mkdirSync(pkgDir, { recursive: true })
  const addonCopy = path.join(pkgDir, path.basename(loaded))
  fs.copyFileSync(loaded, addonCopy)
  fs.copyFileSync(workerBin, path.join(pkgDir, 'cuda-worker'))
  fs.chmodSync(path.join(pkgDir, 'cuda-worker'), 0o755)
  const script = `
    const { Engine, findCudaWorkerPath } = require(${JSON.stringify(path.join(root, 'index.js'))})
    ;(async () => {
      const engine = await Engine.open({ worker: { mode: 'persistent' } })
      const r = await engine.submit({ type: 'echo', payload: 'bundled' }, { target: 'worker' })
      const h = await engine.health()
      await engine.close()
      console.log(JSON.stringify({ found: findCudaWorkerPath(), backend: r.backend, result: r.result, worker: h.worker, cuda_path: h.cuda_path }))
    })().catch((e) => { console.error(e); process.exit(1) })`
  const env = { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: addonCopy, PATH: path.dirname(process.execPath) }
  delete env.CUDA_WORKER_PATH
  const out = execFileSync(process.execPath, ['-e', script], { cwd: path.join(tmp, 'app'), env, encoding: 'utf8' })
  const got = JSON.parse(out.trim().split('\n').pop())
  const want = path.join(fs.realpathSync(pkgDir), 'cuda-worker')
  assert.equal(got.found, want)
  assert.equal(got.backend, 'worker')
  assert.equal(got.result, 'bundled')
  assert.equal(got.worker.source, 'bundled')
  assert.equal(got.worker.path, want)
  assert.equal(got.cuda_path[8], want)
})

// The sync exports read their argument as an untyped value: anything but
// undefined/null/an options object with a string `baseDir` throws
// E_INVALID_ARG naming the field, never napi's StringExpected or the
// caller's own exception (issue 10).
test('findCudaWorkerPath / discoveryCandidates: bad arguments throw E_INVALID_ARG naming the field', () => {
  const revoked = Proxy.revocable({}, {})
  revoked.revoke()
  const cases = [
    [{ baseDir: 1 }, 'options.baseDir'],
    [{ baseDir: true }, 'options.baseDir'],
    [{ baseDir: {} }, 'options.baseDir'],
    [{ baseDir: ['/tmp'] }, 'options.baseDir'],
    [{ baseDir: Symbol('dir') }, 'options.baseDir'],
    [{ baseDir: 10n }, 'options.baseDir'],
    [{ baseDir: NaN }, 'options.baseDir'],
    [{ baseDir: () => '/tmp' }, 'options.baseDir'],
    [{ baseDir: { toString() { throw new Error('toString boom') } } }, 'options.baseDir'],
    [{ baseDir: new Proxy({}, { ownKeys() { throw new Error('trap boom') } }) }, 'options.baseDir'],
    [{ get baseDir() { throw new Error('getter boom') } }, 'options.baseDir'],
    [{ get baseDir() { throw Symbol('thrown symbol') } }, 'options.baseDir'],
    [new Proxy({}, { ownKeys() { throw new Error('trap boom') } }), 'options'],
    [new Proxy({}, { get() { throw new Error('get trap') } }), null],
    [revoked.proxy, 'options'],
    [{ basedir: '/tmp' }, 'did you mean `baseDir`'],
    ['/tmp', 'options'],
    [42, 'options'],
    [Symbol('opts'), 'options'],
    [[], 'options'],
    [() => {}, 'options'],
  ]
  for (const fn of [findCudaWorkerPath, discoveryCandidates]) {
    for (const [i, [arg, field]] of cases.entries()) {
      let err
      try {
        fn(arg)
      } catch (e) {
        err = e
      }
      if (field === null) {
        // A Proxy whose `get` throws but whose keys are readable: no keys, so defaults.
        assert.equal(err, undefined, `${fn.name}: ${String(err?.message)}`)
        continue
      }
      assert.ok(err, `${fn.name}: case ${i} should throw`)
      assert.equal(err.code, 'E_INVALID_ARG', `${fn.name}: case ${i}: ${err.code}: ${err.message}`)
      assert.ok(err.message.includes(field), `${fn.name}: the message names ${field}: ${err.message}`)
    }
    // Still accepted: nothing, undefined, null, and a string (empty too).
    withoutEnv(() => {
      for (const ok of [undefined, null, {}, { baseDir: undefined }, { baseDir: null }, { baseDir: '' }, { baseDir: '/tmp' }]) fn(ok)
      fn()
    })
  }
})

