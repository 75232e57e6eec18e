// close() and the order of calls on the JS thread (docs/design.md "Close"):
// a call made before close() — in the same tick — is admitted and drained
// (it resolves with its value), one made after close() rejects with
// E_CLOSED, and one still running when the drain time runs out rejects with
// E_CANCELLED. Each call admits on the JS thread when it is made; it used to
// admit when the runtime first polled it, which could be after close() had
// stopped admitting (13 of 20 `embed('x'); close()` rounds were E_CLOSED).
// CPU backend, the repo's model.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, builtWorker, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
const ROUNDS = 50

assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')

const open = () => Engine.open({ model: modelDir, device: 'cpu', threads: 1 })
const maxAbsDiff = (a, b) => {
  assert.equal(a.length, b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}
const close = (a, b, what) => assert.ok(maxAbsDiff(a, b) <= 1e-5, `${what}: vectors differ by ${maxAbsDiff(a, b)}`)
const textInput = (texts) => ({ name: 'text', datatype: 'BYTES', shape: [texts.length], data: texts })
const inferReq = { inputs: [textInput(['x'])], outputs: [{ name: 'sentence_embedding' }] }
const docs = ['x', 'the cat sat on the mat', 'stock markets fell sharply today']

const reference = await (async () => {
  const e = await open()
  try {
    return await e.embed('x')
  } finally {
    await e.close()
  }
})()

/** Each kind of call that close() drains: `setup` prepares a fresh engine,
 * `call` makes the call, `check` checks what it resolved with. */
const kinds = {
  embed: {
    call: (e) => e.embed('x'),
    check: (v) => close(v, reference, 'embed'),
  },
  infer: {
    call: (e) => e.infer(inferReq),
    check: (r) => close(r.outputs.find((o) => o.name === 'sentence_embedding').data, reference, 'infer'),
  },
  'submit echo': {
    call: (e, i) => e.submit({ type: 'echo', payload: { round: i, s: 'é' } }),
    check: (r, i) => {
      assert.equal(r.ok, true)
      assert.deepEqual(r.result, { round: i, s: 'é' })
    },
  },
  'submit embedding': {
    call: (e) => e.submit({ type: 'embedding', payload: { texts: ['x'] } }),
    check: (r) => close(r.result.embeddings[0], reference, 'submit embedding'),
  },
  search: {
    setup: async (e) => {
      const index = await e.createIndex('docs', { dims: 384, device: 'cpu' })
      await index.upsert(docs.map((_, i) => `d${i}`), await e.embed(docs))
    },
    call: (e) => e.search('x', { index: 'docs', k: 1 }),
    check: (r) => {
      assert.deepEqual(r.ids, ['d0'])
      assert.ok(Math.abs(r.scores[0] - 1) < 1e-4, `score ${r.scores[0]}`)
    },
  },
}

for (const [name, kind] of Object.entries(kinds)) {
  test(`${name}: ${ROUNDS} rounds of \`call; close()\` in one tick: every call is drained, later calls are E_CLOSED`, async () => {
    const outcomes = { drained: 0, closed: 0, other: [] }
    for (let i = 0; i < ROUNDS; i++) {
      const e = await open()
      if (kind.setup) await kind.setup(e)
      // The same tick: the call is made, then close() at once.
      const before = kind.call(e, i).then(
        (v) => ({ v }),
        (err) => ({ err }),
      )
      const closing = e.close({ drainMs: 60_000 })
      const after = rejection(kind.call(e, i))
      const [got, , late] = await Promise.all([before, closing, after])
      assert.equal(late.code, 'E_CLOSED', `round ${i}: a call after close(): ${late.code}: ${late.message}`)
      assert.match(late.message, /this Engine is closed; open a new one/)
      const again = await rejection(kind.call(e, i))
      assert.equal(again.code, 'E_CLOSED', `round ${i}: a call after close() resolved: ${again.code}`)
      if (got.err?.code === 'E_CLOSED') outcomes.closed++
      else if (got.err) outcomes.other.push(`${got.err.code}: ${got.err.message}`)
      else {
        kind.check(got.v, i)
        outcomes.drained++
      }
    }
    assert.deepEqual(outcomes, { drained: ROUNDS, closed: 0, other: [] }, `${name}: calls made before close()`)
  })
}

test('a call still running when close({ drainMs: 0 }) runs is E_CANCELLED, one after it E_CLOSED', async () => {
  const e = await open()
  const texts = Array.from({ length: 2000 }, (_, i) => `a longer sentence number ${i} `.repeat(12))
  const inflight = rejection(e.embed(texts))
  const inflightJob = rejection(e.submit({ type: 'embedding', payload: { texts } }))
  const closing = e.close({ drainMs: 0 })
  const late = rejection(e.embed('x'))
  const t0 = Date.now()
  await closing
  const [err, jobErr, lateErr] = await Promise.all([inflight, inflightJob, late])
  assert.equal(err.code, 'E_CANCELLED', `${err.code}: ${err.message}`)
  assert.match(err.message, /drain time ran out/)
  assert.equal(jobErr.code, 'E_CANCELLED', `${jobErr.code}: ${jobErr.message}`)
  assert.equal(lateErr.code, 'E_CLOSED')
  assert.ok(Date.now() - t0 < 10_000, 'close returned soon after cancelling')
})

test('health counts a call made before close() as in flight until it is drained', async () => {
  const e = await open()
  const texts = Array.from({ length: 200 }, (_, i) => `sentence ${i} `.repeat(12))
  const inflight = e.embed(texts)
  const h = await e.health()
  assert.equal(h.queue.in_flight, 1)
  const closing = e.close({ drainMs: 60_000 })
  const vectors = await inflight
  await closing
  assert.equal(vectors.length, texts.length)
  const after = await e.health()
  assert.equal(after.queue.in_flight, 0)
  assert.equal(after.status, 'error')
})

test('an engine that loads its model on first use drains a call made before close()', async (t) => {
  if (process.env.CUDA_ENGINE_MODEL) {
    t.skip('SKIPPED: CUDA_ENGINE_MODEL names a model, so it loads at open')
    return
  }
  // No `model`: the default location (./models/all-MiniLM-L6-v2 from the
  // repo root) loads on the first call, here while close() drains it.
  const cwd = process.cwd()
  process.chdir(root)
  try {
    for (let i = 0; i < 3; i++) {
      const e = await Engine.open({ device: 'cpu', threads: 1 })
      assert.equal((await e.health()).model, null, 'not loaded before the first call')
      const p = e.embed('x')
      await e.close({ drainMs: 60_000 })
      close(await p, reference, 'lazily loaded')
      assert.equal((await e.health()).model, null, 'close drops the model it loaded')
    }
  } finally {
    process.chdir(cwd)
  }
})

// createIndex / loadIndex are admitted when they are made, like the other
// calls: one made before close() is drained (it resolves with the index,
// which close() then releases), one made after it is E_CLOSED. Before,
// they were not counted at all, so close() did not wait for them; on an
// isolated engine the creation then met the shutting-down process.
test('createIndex and loadIndex made before close() are drained; after it they are E_CLOSED', async (t) => {
  const os = await import('node:os')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'close-order-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'docs.cevi')
  {
    const { VectorIndex } = addon
    const ix = await VectorIndex.create({ dims: 384, device: 'cpu' })
    await ix.upsert(['a'], reference)
    await ix.save(file)
  }
  const worker = builtWorker()
  const kinds = [['in-process', open]]
  if (worker) {
    // The isolated process is found by the discovery rules.
    const saved = process.env.CUDA_WORKER_PATH
    kinds.push(['isolated', async () => {
      process.env.CUDA_WORKER_PATH = worker
      try {
        return await Engine.open({ model: modelDir, device: 'cpu', isolation: 'process' })
      } finally {
        if (saved === undefined) delete process.env.CUDA_WORKER_PATH
        else process.env.CUDA_WORKER_PATH = saved
      }
    }])
  }
  for (const [kind, openIt] of kinds) {
    for (let i = 0; i < 5; i++) {
      const e = await openIt()
      const created = e.createIndex('made', { dims: 384 })
      const loaded = e.loadIndex('loaded', file)
      const closing = e.close()
      const late = rejection(e.createIndex('late', { dims: 384 })) // handled at once
      const [c, l] = await Promise.all([created, loaded])
      assert.equal(c.dims, 384, `${kind}: createIndex drained`)
      assert.equal(l.size, 1, `${kind}: loadIndex drained`)
      assert.equal((await late).code, 'E_CLOSED', `${kind}: createIndex after close`)
      await closing
    }
  }
})
