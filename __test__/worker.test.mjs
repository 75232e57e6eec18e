// submit(..., { target: 'worker' }) through the real cuda-worker binary, in
// both modes, plus a misbehaving worker for timeouts and cancellation.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = fileURLToPath(new URL('..', import.meta.url))

/** The built cuda-worker (scripts/test.sh builds the workspace bins). */
function workerBin() {
  const candidates = [
    process.env.CUDA_WORKER_BIN,
    path.join(root, 'target/release/cuda-worker'),
    path.join(root, 'target/debug/cuda-worker'),
  ].filter(Boolean)
  const found = candidates.find((p) => fs.existsSync(p))
  assert.ok(found, `cuda-worker is not built (looked in ${candidates.join(', ')}); run cargo build -p cuda-worker`)
  return found
}

/** Open an engine with a worker, closed when the test ends. */
async function openWithWorker(t, worker) {
  const engine = await Engine.open({ worker })
  t.after(() => engine.close())
  const h = await engine.health()
  assert.ok(h.worker.path, 'health().worker.path names the configured worker')
  return engine
}

for (const mode of ['oneshot', 'persistent']) {
  test(`${mode}: echo JSON and bytes run in the worker`, async (t) => {
    const engine = await openWithWorker(t, { path: workerBin(), mode })
    const r = await engine.submit({ id: 'w1', type: 'echo', payload: { text: 'hi', n: [1, 2] } }, { target: 'worker' })
    assert.equal(r.backend, 'worker')
    assert.equal(r.id, 'w1')
    assert.deepEqual(r.result, { text: 'hi', n: [1, 2] })
    const bytes = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 13) & 0xff))
    const b = await engine.submit({ type: 'echo', payload: bytes }, { target: 'worker' })
    assert.equal(b.backend, 'worker')
    assert.ok(Buffer.from(b.result).equals(bytes), 'bytes come back unchanged')
    const e = await rejection(engine.submit({ type: 'no_such_type', payload: 1 }, { target: 'worker' }))
    assert.equal(e.code, 'E_UNKNOWN_TYPE')
    const h = await engine.health()
    assert.equal(h.worker.mode, mode)
    assert.equal(h.worker.path, workerBin())
  })
}

test('persistent: 200 concurrent jobs, one process, no restarts', async (t) => {
  const engine = await openWithWorker(t, { path: workerBin(), mode: 'persistent' })
  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) => engine.submit({ type: 'echo', payload: { i } }, { target: 'worker' })),
  )
  results.forEach((r, i) => assert.deepEqual(r.result, { i }))
  const h = await engine.health()
  assert.equal(h.worker.running, true)
  assert.equal(h.worker.restarts, 0)
})

test('a hung worker times out, an aborted call is cancelled', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-worker-test-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const sleeper = path.join(dir, 'sleeper.sh')
  fs.writeFileSync(sleeper, '#!/bin/sh\nsleep 100\n', { mode: 0o755 })
  const engine = await openWithWorker(t, { path: sleeper, timeoutMs: 300 })
  let t0 = Date.now()
  let e = await rejection(engine.submit({ type: 'slow', payload: {} }, { target: 'worker' }))
  assert.equal(e.code, 'E_WORKER_TIMEOUT', e.message)
  assert.ok(Date.now() - t0 < 1300)
  const ac = new AbortController()
  setTimeout(() => ac.abort(), 100)
  t0 = Date.now()
  e = await rejection(engine.submit({ type: 'slow', payload: {} }, { target: 'worker', signal: ac.signal, timeoutMs: 10_000 }))
  assert.equal(e.code, 'E_CANCELLED')
  assert.ok(Date.now() - t0 < 1000)
})

test('a missing worker path is E_WORKER_NOT_FOUND naming it, at Engine.open', async () => {
  const e = await rejection(Engine.open({ worker: { path: '/nonexistent/cuda-worker' } }))
  assert.equal(e.code, 'E_WORKER_NOT_FOUND')
  assert.match(e.message, /nonexistent\/cuda-worker/)
})
