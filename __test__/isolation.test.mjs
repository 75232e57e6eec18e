// `isolation: 'process'`: the model runs in a supervised cuda-worker. Real
// processes, the CPU backend, the repository's model. Each fault case runs
// in a child Node process whose environment carries
// CUDA_ENGINE_FAULT_INJECT; the isolated cuda-worker inherits it from there
// (the engine forwards nothing a caller sends into it), and only that binary
// reads it. A GPU variant runs the same checks with device 'cuda' and says
// SKIPPED without a GPU.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection, builtWorker } from './helpers.mjs'

const { Engine, health } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')
const workerBin = builtWorker()
assert.ok(workerBin, 'cuda-worker is not built: run cargo build --release -p cuda-worker')
// Discovery rule 1: the isolated process's binary.
process.env.CUDA_WORKER_PATH = workerBin

const texts = ['hello world', 'The quick brown fox jumps over the lazy dog.', '', 'Ünïcödé 🚀', 'isolation costs one restart']
const maxDiff = (a, b) => {
  let d = 0
  a.forEach((v, i) => v.forEach((x, j) => (d = Math.max(d, Math.abs(x - b[i][j])))))
  return d
}
const alive = (pid) => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

/**
 * The fault scenario, run in a child Node process (source below): open an
 * isolated engine, time its cold start (open to first answer), trigger the
 * fault on the 2nd embedding with `inFlight` calls in flight, then time the
 * next call. Prints one JSON line.
 */
const scenario = `
const { Engine } = require(${JSON.stringify(path.join(root, 'index.js'))})
const [device, inFlight, timeoutMs] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3]) || undefined]
const texts = ${JSON.stringify(texts)}
;(async () => {
  const out = {}
  let t = performance.now()
  const engine = await Engine.open({ model: ${JSON.stringify(modelDir)}, device, isolation: 'process' })
  await engine.embed(texts)
  out.cold_ms = performance.now() - t
  out.pid = (await engine.health()).isolation.pid
  const settled = await Promise.allSettled(Array.from({ length: inFlight }, () => engine.embed(texts, { timeoutMs })))
  out.failed = settled.map((s) => s.status === 'rejected' ? { code: s.reason.code, message: s.reason.message } : 'ok')
  t = performance.now()
  try {
    const v = await engine.embed(texts)
    out.next = { ok: v.length === texts.length }
  } catch (e) {
    out.next = { code: e.code, message: e.message }
  }
  out.recovery_ms = performance.now() - t
  const h = await engine.health()
  out.isolation = h.isolation
  out.status = h.status
  await engine.close()
  out.alive_after_close = [out.pid, h.isolation.pid].filter((p) => { try { process.kill(p, 0); return !require('fs').readFileSync('/proc/' + p + '/stat', 'utf8').includes(') Z ') } catch { return false } })
  console.log(JSON.stringify(out))
})().catch((e) => { console.log(JSON.stringify({ crashed: String(e && e.stack || e) })); process.exit(1) })
`

function runScenario(fault, { device = 'cpu', inFlight = 3, timeoutMs = 0 } = {}) {
  const r = spawnSync(process.execPath, ['-e', scenario, device, String(inFlight), String(timeoutMs)], {
    env: { ...process.env, CUDA_ENGINE_FAULT_INJECT: fault },
    encoding: 'utf8',
    timeout: 240_000,
  })
  assert.equal(r.status, 0, `child exited ${r.status} ${r.signal ?? ''}\nstdout: ${r.stdout}\nstderr: ${r.stderr.slice(-4000)}`)
  return JSON.parse(r.stdout.trim().split('\n').pop())
}

function checkRecovery(name, res, codes) {
  console.log(`# ${name}: cold start ${res.cold_ms.toFixed(0)} ms, next call answered ${res.recovery_ms.toFixed(0)} ms after the fault, restarts ${res.isolation.restarts}`)
  for (const f of res.failed) assert.ok(f !== 'ok' && codes.includes(f.code), `${name}: an in-flight call: ${JSON.stringify(f)}`)
  assert.deepEqual(res.next, { ok: true }, `${name}: the next call`)
  assert.ok(res.recovery_ms <= res.cold_ms + 1000, `${name}: recovery ${res.recovery_ms} ms > cold start ${res.cold_ms} ms + 1 s`)
  assert.equal(res.isolation.restarts, 1)
  assert.notEqual(res.isolation.pid, res.pid)
  assert.deepEqual(res.alive_after_close, [], `${name}: processes left after close()`)
}

test('embeddings through isolation equal in-process ones; submit, infer, health, close', async () => {
  const local = await Engine.open({ model: modelDir, device: 'cpu' })
  const iso = await Engine.open({ model: modelDir, device: 'cpu', isolation: 'process' })
  try {
    const [a, b] = [await local.embed(texts), await iso.embed(texts)]
    assert.ok(b[0] instanceof Float32Array)
    const d = maxDiff(a, b)
    console.log(`# max |in-process - isolated| = ${d}`)
    assert.ok(d <= 1e-6, String(d))
    assert.ok(maxDiff([await local.embed('single')], [await iso.embed('single')]) <= 1e-6)
    // A larger call (300 rows in one reply frame, the shape splitting it into
    // several requests would change): rows in the caller's order, equal to
    // in-process ones.
    const many = Array.from({ length: 300 }, (_, i) => `text number ${i} ${'word '.repeat(i % 7)}`)
    const [ma, mb] = [await local.embed(many), await iso.embed(many)]
    assert.equal(mb.length, 300)
    assert.ok(maxDiff(ma, mb) <= 1e-6, 'isolated embed of 300 texts differs from in-process')
    const r = await iso.submit({ type: 'embedding', payload: { texts } })
    assert.equal(r.backend, 'cpu')
    assert.ok(maxDiff(r.result.embeddings, a) <= 1e-6)
    assert.deepEqual((await iso.submit({ type: 'echo', payload: { x: [1, 'y'] } })).result, { x: [1, 'y'] })
    const req = { inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], data: ['a cat', 'a dog'] }] }
    const [ia, ib] = [await local.infer(req), await iso.infer(req)]
    assert.deepEqual(ib.outputs.map((o) => o.name), ia.outputs.map((o) => o.name))
    assert.ok(maxDiff([Array.from(ia.outputs[0].data)], [Array.from(ib.outputs[0].data)]) <= 1e-6)
    assert.deepEqual(await iso.models(), await local.models())

    const h = await iso.health()
    assert.equal(h.isolation.mode, 'process')
    assert.equal(typeof h.isolation.pid, 'number')
    assert.notEqual(h.isolation.pid, process.pid)
    assert.equal(h.isolation.restarts, 0)
    assert.equal(h.isolation.running, true)
    assert.equal(h.isolation.health.isolation.mode, 'in-process')
    const localName = (await local.health()).model.name
    assert.equal(h.isolation.health.model.name, localName)
    assert.equal(h.isolation.health.backend, 'cpu')
    assert.equal(h.model.name, localName)
    assert.equal(h.backend, 'cpu')
    assert.equal(h.status, 'ok')
    assert.equal((await local.health()).isolation.mode, 'in-process')
    await iso.close()
    assert.equal(alive(h.isolation.pid), false, 'the isolated process outlived close()')
    assert.equal((await rejection(iso.embed('x'))).code, 'E_CLOSED')
  } finally {
    await local.close()
    await iso.close()
  }
})

test('bad isolation values are E_INVALID_ARG naming the key', async () => {
  for (const isolation of ['thread', 'Process', true, 1, {}, '']) {
    const e = await rejection(Engine.open({ isolation }))
    assert.equal(e.code, 'E_INVALID_ARG', String(isolation))
    assert.match(e.message, /options\.isolation/)
  }
  const e = await rejection(Engine.open({ isolaton: 'process' }))
  assert.match(e.message, /did you mean `isolation`/)
  assert.ok(addon.optionNames().engine.includes('isolation'))
})

test('an injected segfault mid-embed fails the calls in flight (E_WORKER_EXIT); the next call works', () => {
  const res = runScenario('segfault-on-embed:2')
  checkRecovery('segfault', res, ['E_WORKER_EXIT'])
  assert.match(res.failed[0].message, /signal 11/)
})

test('an injected abort mid-embed fails the calls in flight (E_WORKER_EXIT); the next call works', () => {
  const res = runScenario('abort-on-embed:2')
  checkRecovery('abort', res, ['E_WORKER_EXIT'])
  assert.match(res.failed[0].message, /signal 6/)
})

test('an injected hang is killed at the timeout (E_WORKER_TIMEOUT) and recovers', () => {
  const res = runScenario('hang-on-embed:2', { inFlight: 1, timeoutMs: 1500 })
  checkRecovery('hang', res, ['E_WORKER_TIMEOUT'])
})

test('an injected sticky CUDA fault (E_CUDA_FAULT) restarts the isolated process; the next call works', () => {
  const res = runScenario('sticky-cuda-fault-on-embed:2', { inFlight: 1 })
  checkRecovery('sticky-cuda-fault', res, ['E_CUDA_FAULT'])
})

test('fault injection is read by cuda-worker only: an in-process engine ignores it', () => {
  const r = spawnSync(process.execPath, ['-e', `
    const { Engine } = require(${JSON.stringify(path.join(root, 'index.js'))})
    Engine.open({ model: ${JSON.stringify(modelDir)}, device: 'cpu' }).then(async (e) => {
      for (let i = 0; i < 3; i++) await e.embed('x')
      await e.close(); console.log('ok')
    })`], { env: { ...process.env, CUDA_ENGINE_FAULT_INJECT: 'segfault-on-embed:1' }, encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'ok')
})

// GPU variant: the same checks with device 'cuda'.
const h = await health()
const gpuSkip = h.cuda_available ? false : `no CUDA device here (${h.errors.join('; ')}): GPU isolation tests SKIPPED`
if (gpuSkip) console.log(`# ${gpuSkip}`)

test('GPU: isolated embeddings match in-process ones', { skip: gpuSkip }, async () => {
  const local = await Engine.open({ model: modelDir, device: 'cuda' })
  const iso = await Engine.open({ model: modelDir, device: 'cuda', isolation: 'process' })
  try {
    const d = maxDiff(await local.embed(texts), await iso.embed(texts))
    console.log(`# GPU: max |in-process - isolated| = ${d}`)
    assert.ok(d <= 1e-6, String(d))
    const hh = await iso.health()
    assert.equal(hh.backend, 'cuda')
    assert.equal(hh.isolation.health.compute.backend, 'cuda')
  } finally {
    await local.close()
    await iso.close()
  }
})

for (const [fault, codes, o] of [
  ['segfault-on-embed:2', ['E_WORKER_EXIT'], {}],
  ['abort-on-embed:2', ['E_WORKER_EXIT'], {}],
  ['hang-on-embed:2', ['E_WORKER_TIMEOUT'], { inFlight: 1, timeoutMs: 3000 }],
  ['sticky-cuda-fault-on-embed:2', ['E_CUDA_FAULT'], { inFlight: 1 }],
]) {
  test(`GPU: ${fault} costs one restart of the isolated process`, { skip: gpuSkip }, () => {
    checkRecovery(`GPU ${fault}`, runScenario(fault, { device: 'cuda', ...o }), codes)
  })
}
