// Worker discovery from JS (docs/discovery.md) and routing to the worker it
// finds: CUDA_WORKER_PATH, <baseDir>/cuda-worker/cuda-worker, restarts.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
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
