// embed(texts, { onProgress }): monotonic, throttled progress from the
// batcher, a final { done: total, total } before the Promise resolves, a
// throwing callback rejecting only its own call, and bad values. CPU, the
// real model. Needs the model: `bash scripts/fetch-model.sh`.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')

// Small passes, so that a 2,000-text call takes many of them.
const engine = await Engine.open({ model: modelDir, device: 'cpu', maxBatchSize: 64 })
test.after(() => engine.close())

const texts = Array.from({ length: 2000 }, (_, i) => `short text number ${i}`)

test('progress is monotonic, throttled, ends with {done: total, total} before the Promise resolves', async () => {
  const calls = []
  let resolved = false
  const started = Date.now()
  const p = engine.embed(texts, {
    onProgress: (progress) => {
      assert.equal(resolved, false, 'no progress after resolution')
      calls.push({ ...progress, at: Date.now() - started })
    },
  })
  const vectors = await p.then((v) => {
    resolved = true
    return v
  })
  assert.ok(calls.length >= 2, `some progress before the end: ${JSON.stringify(calls)}`)
  assert.deepEqual({ done: calls.at(-1).done, total: calls.at(-1).total }, { done: 2000, total: 2000 })
  for (let i = 0; i < calls.length; i++) {
    assert.equal(calls[i].total, 2000)
    assert.ok(calls[i].done > 0 && calls[i].done <= 2000)
    if (i > 0) assert.ok(calls[i].done > calls[i - 1].done, `monotonic: ${JSON.stringify(calls)}`)
  }
  // Throttled to one per 100 ms (queued that far apart; delivery can
  // jitter, so count them rather than measure each gap).
  const mid = calls.slice(0, -1)
  const elapsed = calls.at(-1).at
  assert.ok(mid.length <= Math.floor(elapsed / 100) + 2, `${mid.length} calls in ${elapsed} ms: ${JSON.stringify(mid)}`)
  assert.equal(calls.filter((c) => c.done === 2000).length, 1, 'one final call')

  const plain = await engine.embed(texts)
  assert.equal(vectors.length, plain.length)
  vectors.forEach((v, i) => assert.deepEqual(v, plain[i]))
})

test('a single text and an empty call still get the final call', async () => {
  const seen = []
  const v = await engine.embed('one', { onProgress: (p) => seen.push(p) })
  assert.equal(v.length, 384)
  assert.deepEqual(seen, [{ done: 1, total: 1 }])
  const empty = []
  assert.deepEqual(await engine.embed([], { onProgress: (p) => empty.push(p) }), [])
  assert.deepEqual(empty, [{ done: 0, total: 0 }])
})

test('a throwing onProgress rejects its own call once with E_INVALID_ARG; other calls are unaffected', async () => {
  let n = 0
  const other = engine.embed(texts.slice(0, 500))
  const err = await rejection(
    engine.embed(texts, {
      onProgress: () => {
        n++
        throw new Error('boom')
      },
    }),
  )
  assert.equal(err.code, 'E_INVALID_ARG')
  assert.match(err.message, /`options\.onProgress` threw: Error: boom/)
  assert.equal(n, 1, 'no call after it threw')
  assert.equal((await other).length, 500)
  // Throwing in the final call.
  const last = await rejection(engine.embed('x', { onProgress: () => { throw new TypeError('late') } }))
  assert.equal(last.code, 'E_INVALID_ARG')
  assert.match(last.message, /late/)
  // The engine and the event loop are fine.
  assert.equal((await engine.embed(['still', 'works'])).length, 2)
})

test('onProgress must be a function; other calls do not take it', async () => {
  for (const bad of [42, 'fn', {}, true]) {
    const err = await rejection(engine.embed(['a'], { onProgress: bad }))
    assert.equal(err.code, 'E_INVALID_ARG')
    assert.match(err.message, /`options\.onProgress` must be a function/)
  }
  assert.equal((await engine.embed('ok', { onProgress: undefined })).length, 384)
  const sub = await rejection(engine.submit({ type: 'echo', payload: 1 }, { onProgress: () => {} }))
  assert.equal(sub.code, 'E_INVALID_ARG')
  assert.match(sub.message, /`options\.onProgress` is not an option/)
  const inf = await rejection(
    engine.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [1], data: ['a'] }] }, { onProgress: () => {} }),
  )
  assert.equal(inf.code, 'E_INVALID_ARG')
  assert.match(inf.message, /onProgress/)
})

test('the module-level embed takes onProgress too', async () => {
  process.env.CUDA_ENGINE_MODEL ??= modelDir
  const seen = []
  const v = await addon.embed(['a', 'b', 'c'], { onProgress: (p) => seen.push(p) })
  assert.equal(v.length, 3)
  assert.deepEqual(seen.at(-1), { done: 3, total: 3 })
})
