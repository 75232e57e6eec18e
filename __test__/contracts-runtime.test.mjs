// Issue 9's runtime contracts: the one options schema (misspelled keys are
// E_INVALID_ARG naming the key and the nearest valid name), model loading at
// open, health semantics a readiness probe can use, close with drain and
// E_CLOSED; and the per-call robustness rules (every async export settles
// with a code from the table whatever it is given).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { addon, rejection } from './helpers.mjs'

const { Engine, embed, submit, errorCodes } = addon
const root = path.resolve(import.meta.dirname, '..')
const codes = new Set(errorCodes().map((c) => c.code))
const modelDir = process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')

async function invalid(promise, ...mustContain) {
  const err = await rejection(promise)
  assert.equal(err.code, 'E_INVALID_ARG', `${err.code}: ${err.message}`)
  for (const s of mustContain) assert.ok(err.message.includes(s), `"${err.message}" lacks ${s}`)
  return err
}

test('misspelled engine options reject naming the key and the nearest name', async () => {
  await invalid(Engine.open({ maxEnvelopBytes: 10 }), '`options.maxEnvelopBytes`', 'did you mean `maxEnvelopeBytes`')
  await invalid(Engine.open({ devise: 'cuda' }), '`options.devise`', 'did you mean `device`')
  await invalid(Engine.open({ limits: {} }), '`options.limits`', 'maxEnvelopeBytes')
  await invalid(Engine.open({ limits: { maxEnvelopeBytes: 1024 } }), '`options.limits`')
  await invalid(Engine.open({ worker: { pooSize: 2 } }), '`options.worker.pooSize`', 'did you mean `poolSize`')
  await invalid(Engine.open({ maxInFlight: 'many' }), 'options.maxInFlight')
  await invalid(Engine.open({ maxJsonDepth: 1e6 }), 'options.maxJsonDepth')
})

test('engine options that JSON cannot carry reject with a code, never throw', async () => {
  const cyclic = {}
  cyclic.self = cyclic
  for (const bad of [{ maxInFlight: NaN }, { device: Symbol('x') }, cyclic, { model: () => 1 }, 'cpu', [1]]) {
    let promise
    assert.doesNotThrow(() => {
      promise = Engine.open(bad)
    })
    const err = await rejection(promise)
    assert.ok(codes.has(err.code), `${String(err.code)}: ${err.message}`)
    assert.notEqual(err.code, 'E_INTERNAL')
  }
  const getter = { get device() { throw new Error('boom') } }
  await invalid(Engine.open(getter), 'boom')
})

test('every documented option opens an engine', async () => {
  const e = await Engine.open({
    model: modelDir, device: 'cpu', dtype: 'fp32', threads: 1, baseDir: root,
    maxEnvelopeBytes: 1 << 20, maxJsonDepth: 16, maxInFlight: 64, maxBatchTokens: 4096,
    maxBatchSize: 64, maxQueuedTexts: 1000, maxTextsPerCall: 100,
    worker: { path: path.join(root, 'target/release/cuda-worker'), mode: 'oneshot', args: [], timeoutMs: 5000, reapOrphans: false, maxOutputBytes: 1 << 20, maxStderrBytes: 1024, binaryFormat: 'cbor' },
  })
  const err = await rejection(e.embed(new Array(101).fill('x')))
  assert.equal(err.code, 'E_TOO_LARGE') // maxTextsPerCall applied
  const big = await rejection(e.submit({ type: 'echo', payload: 'x'.repeat(2 << 20) }))
  assert.equal(big.code, 'E_TOO_LARGE') // maxEnvelopeBytes applied
  await e.close()
})

test('misspelled call and embed options reject naming the key', async () => {
  await invalid(embed('x', { normalise: false }), '`options.normalise`', 'did you mean `normalize`')
  await invalid(embed('x', { timeout: 5 }), '`options.timeout`', 'did you mean `timeoutMs`')
  await invalid(submit({ type: 'echo', payload: 1 }, { normalize: true }), '`options.normalize`')
  await invalid(submit({ type: 'echo', payload: 1 }, { timeoutMs: 1e300 }), 'options.timeoutMs')
  await invalid(submit({ type: 'echo', payload: 1 }, { timeoutMs: -1 }), 'options.timeoutMs')
})

test('a named model that cannot be loaded rejects open with E_MODEL naming it', async () => {
  const err = await rejection(Engine.open({ model: '/nonexistent/model-dir' }))
  assert.equal(err.code, 'E_MODEL')
  assert.ok(err.message.includes('/nonexistent/model-dir'), err.message)
})

test('health on a CPU-only host with default options is ok', async (t) => {
  const h = await addon.health()
  if (h.cuda_available) {
    t.skip('SKIPPED: a CUDA device is present; this checks the CPU-only semantics')
    return
  }
  assert.equal(h.status, 'ok', JSON.stringify(h.errors))
  assert.equal(h.backend, 'cpu')
  assert.equal(h.cuda_available, false)
  await embed('warm the default model')
  const after = await addon.health()
  assert.equal(after.status, 'ok', JSON.stringify(after.errors))
  assert.equal(after.model.name, 'all-MiniLM-L6-v2')
  assert.ok(after.errors.some((e) => e.startsWith('cuda:')), 'why CUDA is not used stays in errors')
})

test('close waits for an in-flight call, then rejects new ones with E_CLOSED', async () => {
  const e = await Engine.open({ model: modelDir, device: 'cpu', threads: 1 })
  const texts = Array.from({ length: 300 }, (_, i) => `sentence number ${i} `.repeat(12))
  const order = []
  const t0 = Date.now()
  const inflight = e.embed(texts).then((v) => {
    order.push('embed')
    return v
  })
  await new Promise((r) => setTimeout(r, 50))
  const closing = e.close({ drainMs: 60_000 }).then(() => order.push('close'))
  const late = await rejection(e.embed('too late'))
  assert.equal(late.code, 'E_CLOSED')
  const vectors = await inflight
  await closing
  assert.equal(vectors.length, texts.length)
  assert.deepEqual(order, ['embed', 'close'], 'close resolves after the in-flight call')
  const ms = Date.now() - t0
  const h = await e.health()
  assert.equal(h.status, 'error')
  assert.equal(h.model, null, 'close drops the model')
  console.log(`# drained an in-flight embed of ${texts.length} texts in ${ms} ms`)
})

test('close cancels what is left after drainMs with E_CANCELLED', async () => {
  const e = await Engine.open({ model: modelDir, device: 'cpu', threads: 1 })
  const texts = Array.from({ length: 2000 }, (_, i) => `another sentence ${i} `.repeat(12))
  const inflight = rejection(e.embed(texts))
  await new Promise((r) => setTimeout(r, 50))
  const t0 = Date.now()
  await e.close({ drainMs: 100 })
  const err = await inflight
  assert.equal(err.code, 'E_CANCELLED')
  assert.ok(Date.now() - t0 < 5000, 'close returned soon after the drain deadline')
  await invalid(e.close({ drain: 1 }), '`options.drain`', 'did you mean `drainMs`')
})

test('with no model anywhere the engine opens, routes worker jobs, and embed says how to get one', () => {
  // A child with an empty cwd and HOME, so no default model location exists.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ce-nomodel-'))
  const worker = path.join(root, 'target/release/cuda-worker')
  const script = `
    const m = require(${JSON.stringify(path.join(root, 'index.js'))})
    ;(async () => {
      const e = await m.Engine.open({ worker: { path: ${JSON.stringify(worker)}, mode: 'persistent' } })
      const h = await e.health()
      const r = await e.submit({ type: 'echo', payload: { a: 1 } }, { target: 'worker' })
      let code = null, message = ''
      try { await e.embed('x') } catch (err) { code = err.code; message = err.message }
      await e.close()
      console.log(JSON.stringify({ model: h.model, status: h.status, backend: r.backend, result: r.result, code, message }))
    })().catch((err) => { console.log(JSON.stringify({ fatal: err.code + ': ' + err.message })); process.exit(1) })`
  const env = { ...process.env, HOME: dir, HF_HOME: path.join(dir, 'hf'), HF_HUB_CACHE: '' }
  delete env.CUDA_ENGINE_MODEL
  delete env.CUDA_WORKER_PATH
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: dir, env, encoding: 'utf8' }).trim())
  fs.rmSync(dir, { recursive: true, force: true })
  assert.equal(out.model, null)
  assert.equal(out.status, 'ok')
  assert.equal(out.backend, 'worker')
  assert.deepEqual(out.result, { a: 1 })
  assert.equal(out.code, 'E_MODEL')
  assert.ok(out.message.includes('CUDA_ENGINE_MODEL') && out.message.includes('EngineOptions.model'), out.message)
})

test("one caller's broken AbortSignal fails that call alone", async () => {
  const env = { type: 'echo', payload: { n: 1 } }
  const broken = { aborted: false, addEventListener() {}, removeEventListener() { throw 1 } }
  const calls = [submit(env, { signal: broken })]
  for (let i = 0; i < 199; i++) calls.push(submit({ type: 'echo', payload: { n: i } }))
  const settled = await Promise.allSettled(calls)
  assert.equal(settled.length, 200)
  for (let i = 1; i < 200; i++) {
    assert.equal(settled[i].status, 'fulfilled')
    assert.deepEqual(settled[i].value.result, { n: i - 1 })
  }
  // Signals that cannot be hooked reject (never a synchronous throw).
  for (const signal of [
    { aborted: false },
    { aborted: false, addEventListener() { throw new Error('nope') } },
    { get aborted() { throw new Error('getter') } },
    new Proxy({}, { get() { throw new Error('trap') } }),
  ]) {
    let p
    assert.doesNotThrow(() => {
      p = submit(env, { signal })
    })
    const err = await rejection(p)
    assert.equal(err.code, 'E_INVALID_ARG', err.message)
  }
})

test('giant sparse arrays are rejected before anything is allocated', async () => {
  const err = await rejection(embed(new Array(2 ** 32 - 1)))
  assert.equal(err.code, 'E_TOO_LARGE')
  const err2 = await rejection(
    addon.infer({ inputs: [{ name: 'input_ids', shape: [1, 3], datatype: 'INT64', data: new Array(2 ** 32 - 1) }] }),
  )
  assert.equal(err2.code, 'E_TOO_LARGE')
})

test('queue time is measured', async () => {
  const r = await submit({ type: 'embedding', payload: { texts: ['a', 'b'] } })
  const t = r.timings_ms
  assert.ok(t.queue >= 0 && t.run > 0 && t.total >= t.queue + t.run - 1e-6, JSON.stringify(t))
})

test('results never change data: __proto__ stays an own key, NUL keys work, doubles round-trip', async () => {
  const r = await submit({ type: 'echo', payload: JSON.parse('{"__proto__":{"admin":true},"a\\u0000b":1}') })
  assert.equal(r.result.admin, undefined, 'the prototype was not set')
  assert.equal(Object.getPrototypeOf(r.result), Object.prototype)
  assert.deepEqual(Object.keys(r.result), ['__proto__', 'a\0b'])
  assert.deepEqual(r.result.__proto__, { admin: true })
  const doubles = Array.from({ length: 2000 }, (_, i) => (i + 1) * 62.48403934296220 + i / 7)
  doubles.push(124968.07868592441)
  const viaText = await submit(JSON.stringify({ type: 'echo', payload: doubles }))
  assert.deepEqual(viaText.result, doubles)
  const viaB64 = await submit({ type: 'echo', payload_b64: Buffer.from(JSON.stringify(doubles)).toString('base64') })
  assert.deepEqual(viaB64.result, doubles)
})

test('every function index.d.ts declares is exported, by require and by import', async () => {
  const dts = fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8')
  const names = [...new Set([...dts.matchAll(/^export declare function (\w+)/gm)].map((m) => m[1]))]
  assert.ok(names.includes('embed') && names.includes('submit') && names.includes('optionNames'), names.join(','))
  const esm = await import('../index.mjs')
  for (const n of names) {
    assert.equal(typeof addon[n], 'function', `require: ${n}`)
    assert.equal(typeof esm[n], 'function', `import: ${n}`)
  }
  assert.equal(typeof addon.Engine.open, 'function')
})

// Issue 10 item 4: the JS-object walk (in) and the JSON-to-JS build (out)
// are iterative, so nesting at the ceiling works on a small native stack.
function nested(n) {
  let v = 0
  for (let i = 0; i < n; i++) v = i % 2 ? [v] : { k: v }
  return v
}
function depthOf(v) {
  let d = 0
  while (typeof v === 'object' && v !== null) { v = Array.isArray(v) ? v[0] : v.k; d++ }
  return d
}

test('payloads nested to the depth ceiling round-trip; deeper is E_TOO_DEEP', async () => {
  const engine = await Engine.open({ maxJsonDepth: 1000 })
  try {
    const r = await engine.submit({ type: 'echo', payload: nested(990) })
    assert.equal(depthOf(r.result), 990)
    const err = await rejection(engine.submit({ type: 'echo', payload: nested(1010) }))
    assert.equal(err.code, 'E_TOO_DEEP', err.message)
  } finally {
    await engine.close()
  }
})

test('deep payloads in a worker thread with a small stack settle', async () => {
  const { Worker } = await import('node:worker_threads')
  const code = `
    const { parentPort } = require('node:worker_threads')
    const { Engine } = require(${JSON.stringify(path.join(root, 'index.js'))})
    ${nested.toString()}
    ${depthOf.toString()}
    ;(async () => {
      const engine = await Engine.open({ maxJsonDepth: 1000 })
      const r = await engine.submit({ type: 'echo', payload: nested(990) })
      const e = await engine.submit({ type: 'echo', payload: nested(5000) }).catch((e) => e)
      await engine.close()
      parentPort.postMessage({ depth: depthOf(r.result), code: e.code })
    })().catch((e) => parentPort.postMessage({ error: String(e && e.stack) }))`
  const w = new Worker(code, { eval: true, resourceLimits: { stackSizeMb: 1 } })
  const msg = await new Promise((resolve, reject) => {
    w.once('message', resolve)
    w.once('error', reject)
    w.once('exit', (c) => reject(new Error(`worker exited ${c}`)))
  })
  await w.terminate()
  assert.deepEqual(msg, { depth: 990, code: 'E_TOO_DEEP' })
})

// Issue 10 item 10: argument conversion on the JS thread is bounded by
// maxPayloadValues (values read one by one) and maxEnvelopeBytes (bytes
// copied, embed texts included), checked before the walk or the copy.
test('maxPayloadValues bounds object payloads and infer data arrays; embed texts are bounded in bytes', async () => {
  const big = await rejection(submit({ type: 'echo', payload: new Array(6e7) }))
  assert.equal(big.code, 'E_TOO_LARGE', big.message)
  assert.ok(big.message.includes('maxPayloadValues') && big.message.includes('`payload`'), big.message)
  const engine = await Engine.open({ maxPayloadValues: 100, maxEnvelopeBytes: 1000 })
  try {
    const ok = await engine.submit({ type: 'echo', payload: Array.from({ length: 98 }, (_, i) => i) })
    assert.equal(ok.result.length, 98)
    const over = await rejection(engine.submit({ type: 'echo', payload: Array.from({ length: 34 }, (_, i) => ({ a: i })) }))
    assert.equal(over.code, 'E_TOO_LARGE', over.message)
    assert.ok(over.message.includes('`payload['), over.message)
    const data = await rejection(engine.infer({ inputs: [{ name: 'input_ids', shape: [1, 101], datatype: 'INT64', data: new Array(101).fill(1) }] }))
    assert.equal(data.code, 'E_TOO_LARGE', data.message)
    assert.ok(data.message.includes('maxPayloadValues'), data.message)
    // A typed array is one copy: it does not count.
    const typed = await engine.infer({ inputs: [{ name: 'input_ids', shape: [1, 3], datatype: 'INT64', data: new BigInt64Array([101n, 7592n, 102n]) }] }).catch((e) => e)
    assert.notEqual(typed.code, 'E_TOO_LARGE', String(typed.message))
    const texts = await rejection(engine.embed(['a'.repeat(600), 'b'.repeat(600)]))
    assert.equal(texts.code, 'E_TOO_LARGE', texts.message)
    assert.ok(texts.message.includes('texts[1]') && texts.message.includes('maxEnvelopeBytes'), texts.message)
  } finally {
    await engine.close()
  }
  await invalid(Engine.open({ maxPayloadValues: 0 }), 'options.maxPayloadValues')
})

// Issue 10 item 9: a lone surrogate had three outcomes on three paths.
test('a lone surrogate becomes U+FFFD on every path (object, JSON text, raw string, bytes, payload_b64)', async () => {
  const lone = 'a\ud800b\udc00c'
  const want = 'a\ufffdb\ufffdc'
  const text = JSON.stringify({ type: 'echo', payload: { s: lone } }) // writes \ud800 escapes
  assert.ok(text.includes('\\ud800'))
  const results = await Promise.all([
    submit({ type: 'echo', payload: { s: lone } }),
    submit(text),
    submit(`{"type":"echo","payload":{"s":"${lone}"}}`),
    submit(new TextEncoder().encode(text)),
    submit({ type: 'echo', payload_b64: Buffer.from(JSON.stringify({ s: lone })).toString('base64') }),
  ])
  for (const [i, r] of results.entries()) assert.equal(r.result.s, want, `path ${i}`)
  // A valid pair is kept.
  assert.equal((await submit(JSON.stringify({ type: 'echo', payload: '\ud83d\ude00' }))).result, '\ud83d\ude00')
})

// Issue 10 item 10: close() gives the model's memory and threads back
// (20 closed engines held 2.0 GB and 70 threads). Run in a child so the
// readings are this scenario's alone.
test('closing engines returns the model memory and threads to where they were', () => {
  const script = `
    const m = require(${JSON.stringify(path.join(root, 'index.js'))})
    const fs = require('fs')
    const st = () => { const s = fs.readFileSync('/proc/self/status', 'utf8'); return { rss: +s.match(/VmRSS:\\s+(\\d+)/)[1] * 1024, threads: +s.match(/Threads:\\s+(\\d+)/)[1] } }
    ;(async () => {
      const model = ${JSON.stringify(modelDir)}
      const first = await m.Engine.open({ model }); await first.embed('warm-up'); await first.close()
      global.gc(); const before = st()
      const live = []
      for (let i = 0; i < 5; i++) { const e = await m.Engine.open({ model }); await e.embed(['a', 'b']); live.push(e) }
      const open = st()
      for (const e of live) await e.close()
      for (let i = 0; i < 10; i++) { const e = await m.Engine.open({ model }); await e.embed('c'); await e.close() }
      global.gc(); await new Promise((r) => setTimeout(r, 200))
      console.log(JSON.stringify({ before, open, after: st() }))
    })()`
  const out = JSON.parse(execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' }).trim().split('\n').pop())
  const mb = (b) => Math.round(b / 2 ** 20)
  const msg = JSON.stringify({ before: mb(out.before.rss), open: mb(out.open.rss), after: mb(out.after.rss), threads: [out.before.threads, out.open.threads, out.after.threads] })
  assert.ok(out.open.rss - out.before.rss > 200 * 2 ** 20, `5 open engines hold their models: ${msg}`)
  assert.ok(out.after.rss - out.before.rss < 60 * 2 ** 20, `memory back after close: ${msg}`)
  assert.equal(out.after.threads, out.before.threads, msg)
})

// A getter or Proxy trap that throws while the binding reads an options
// object fails that call with E_INVALID_ARG naming the field it was reading
// (it said "reading a property threw" without the field).
test('a throwing getter in options is E_INVALID_ARG naming the field', async () => {
  const { Engine, submit, embed } = addon
  const boom = () => { throw new Error('boom') }
  await invalid(Engine.open({ get device() { return boom() } }), '`options.device`', 'boom')
  await invalid(Engine.open({ worker: { get path() { return boom() } } }), '`options.worker.path`', 'boom')
  await invalid(submit({ type: 'echo', payload: 1 }, { get timeoutMs() { return boom() } }), '`timeoutMs`', 'boom')
  await invalid(embed('x', { get normalize() { return boom() } }), '`normalize`', 'boom')
  await invalid(submit({ type: 'echo', get payload() { return boom() } }), '`payload`', 'boom')
  await invalid(submit({ type: 'echo', payload: { a: [1, { get b() { return boom() } }] } }), '`payload.a[1].b`', 'boom')
  const engine = await Engine.open({ device: 'cpu' })
  await invalid(engine.close({ get drainMs() { return boom() } }), '`options.drainMs`', 'boom')
  await engine.close()
})
