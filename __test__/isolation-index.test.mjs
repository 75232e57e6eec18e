// Vector indexes with `isolation: 'process'` (docs/vector-search.md "With
// isolation: 'process'"): the host copy in this process, the search copy in
// the isolated cuda-worker. Real processes, the CPU backend, the
// repository's model. Every result is compared with the same operations on
// an in-process engine; the isolated process is killed to check that its
// copies are rebuilt from the host copy before the next search.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection, randoms, builtWorker } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')
const workerBin = builtWorker()
assert.ok(workerBin, 'cuda-worker is not built: run cargo build --release -p cuda-worker')
process.env.CUDA_WORKER_PATH = workerBin

/** Same ids, scores within 1e-6. */
function sameHits(a, b, what) {
  assert.equal(a.length, b.length, `${what}: result count`)
  a.forEach((r, i) => {
    assert.deepEqual([...r.ids], [...b[i].ids], `${what}: ids of query ${i}`)
    assert.equal(r.scores.length, b[i].scores.length)
    r.scores.forEach((s, j) => assert.ok(Math.abs(s - b[i].scores[j]) <= 1e-6, `${what}: score ${i}/${j}: ${s} vs ${b[i].scores[j]}`))
  })
}

async function waitFor(cond, ms = 10000) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return true
    await new Promise((r) => setTimeout(r, 20))
  }
  return false
}

const dims = 16
const texts = ['the cat sat on the mat', 'stock markets fell sharply today', 'a recipe for tomato soup', 'the dog chased the ball']

let iso, local
test.before(async () => {
  ;[iso, local] = await Promise.all([
    Engine.open({ isolation: 'process', device: 'cpu', model: modelDir }),
    Engine.open({ device: 'cpu', model: modelDir }),
  ])
})
test.after(async () => {
  await Promise.all([iso?.close(), local?.close()])
})

/** Run `f(engine)` on both engines; returns [isolated, in-process]. */
const both = (f) => Promise.all([f(iso), f(local)])

test('create/upsert/search/get/remove/info/save give the in-process results', async () => {
  for (const [metric, dtype] of [['cosine', 'fp32'], ['ip', 'fp16'], ['l2', 'fp32']]) {
    const name = `v-${metric}-${dtype}`
    const [a, b] = await both((e) => e.createIndex(name, { dims, metric, dtype, device: 'auto' }))
    assert.equal(a.device, 'cpu')
    assert.deepEqual([a.dims, a.metric, a.dtype], [b.dims, b.metric, b.dtype])
    const n = 500
    const ids = Array.from({ length: n }, (_, i) => `id${i}`)
    const vecs = randoms(n * dims, 7)
    const ns = ids.map((_, i) => (i % 3 === 0 ? 'even' : null))
    await Promise.all([a.upsert(ids, vecs, { namespaces: ns }), b.upsert(ids, vecs, { namespaces: ns })])
    // Replace some, remove some.
    const re = ids.slice(0, 50)
    const reVecs = randoms(50 * dims, 99)
    await Promise.all([a.upsert(re, reVecs), b.upsert(re, reVecs)])
    const gone = ids.slice(100, 140).concat(['nope'])
    const [ra, rb] = await Promise.all([a.remove(gone), b.remove(gone)])
    assert.equal(ra, 40)
    assert.equal(ra, rb)
    assert.equal(a.size, b.size)
    const q = randoms(8 * dims, 3)
    sameHits(await a.search(q, { k: 10 }), await b.search(q, { k: 10 }), `${name} search`)
    sameHits(await a.search(q, { k: 5, namespace: 'even' }), await b.search(q, { k: 5, namespace: 'even' }), `${name} namespace`)
    assert.deepEqual(await a.get(['id0', 'id120', 'id499']), await b.get(['id0', 'id120', 'id499']))
    const [ia, ib] = await Promise.all([a.info(), b.info()])
    assert.deepEqual({ ...ia, capacity: 0, bytes: 0 }, { ...ib, capacity: 0, bytes: 0 })
    // The same file from both.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iso-index-'))
    const [sa, sb] = await Promise.all([a.save(path.join(dir, 'a.cevi')), b.save(path.join(dir, 'b.cevi'))])
    assert.equal(sa.sha256, sb.sha256)
    // engine.loadIndex: the host copy reads it, the isolated copy is sent.
    const loaded = await iso.loadIndex(`${name}-loaded`, sa.path)
    assert.equal(loaded.size, a.size)
    sameHits(await loaded.search(q, { k: 10 }), await b.search(q, { k: 10 }), `${name} loaded`)
    fs.rmSync(dir, { recursive: true, force: true })
    // Argument errors are the in-process ones (validated by the host copy).
    for (const call of [(x) => x.search(q, { k: 0 }), (x) => x.upsert(['x'], new Float32Array(dims + 1)), (x) => x.search(new Float32Array(dims + 1))]) {
      const [ea, eb] = await Promise.all([rejection(call(a)), rejection(call(b))])
      assert.equal(ea.code, eb.code)
      assert.equal(ea.message, eb.message)
    }
    assert.equal(iso.dropIndex(`${name}-loaded`), true)
    const err = await rejection(loaded.search(q))
    assert.equal(err.code, 'E_INVALID_ARG')
    assert.match(err.message, /dropped/)
  }
  const h = await iso.health()
  assert.deepEqual(
    h.indexes.map((i) => [i.name, i.count, i.device]),
    (await local.health()).indexes.map((i) => [i.name, i.count, 'cpu']),
  )
})

test('engine.search(texts) and submit vector_search embed and search in the isolated process', async () => {
  const [a, b] = await both((e) => e.createIndex('docs', { dims: 384, dtype: 'fp32' }))
  const vecs = await local.embed(texts)
  await Promise.all([a.upsert(texts.map((_, i) => `t${i}`), vecs, { namespaces: ['pets', null, null, 'pets'] }), b.upsert(texts.map((_, i) => `t${i}`), vecs, { namespaces: ['pets', null, null, 'pets'] })])
  const [one, oneLocal] = await both((e) => e.search('a kitten on a rug', { index: 'docs', k: 2 }))
  assert.deepEqual(one.ids, ['t0', 't3'])
  sameHits([one], [oneLocal], 'engine.search(text)')
  const [many, manyLocal] = await both((e) => e.search(['soup', 'finance news'], { index: 'docs', k: 3, namespace: undefined }))
  sameHits(many, manyLocal, 'engine.search(texts)')
  const payload = { index: 'docs', k: 2, text: 'tomato' }
  const [job, jobLocal] = await both((e) => e.submit({ type: 'vector_search', payload }))
  assert.equal(job.type, 'vector_search')
  assert.deepEqual(job.result.results[0].ids, jobLocal.result.results[0].ids)
  const vector = Array.from(await local.embed('tomato'))
  const [byVec, byVecLocal] = await both((e) => e.submit({ type: 'vector_search', payload: { index: 'docs', k: 2, vector } }))
  assert.deepEqual(byVec.result.results, byVecLocal.result.results)
  // Errors as in-process.
  const small = await iso.createIndex('small', { dims: 3 })
  let err = await rejection(iso.search('x', { index: 'small' }))
  assert.equal(err.code, 'E_INVALID_ARG')
  assert.match(err.message, /3-dimensional vectors but the model embeds 384/)
  err = await rejection(iso.search('x', { index: 'missing' }))
  assert.match(err.message, /no vector index named "missing"/)
  assert.equal(small.device, 'cpu')
  assert.equal(iso.dropIndex('small'), true)
})

test('the internal index requests are not job types: submit rejects them as usual', async () => {
  for (const type of ['index_upsert', 'index_create', 'index_search', 'index_op', 'upsert']) {
    const [ea, eb] = await both((e) => rejection(e.submit({ type, payload: { index: 'docs', ids: ['x'] } })))
    assert.equal(ea.code, 'E_UNKNOWN_TYPE', type)
    assert.equal(ea.code, eb.code)
  }
  // The frame marker is not an envelope key either: whatever the
  // in-process engine does with it, the isolated one does too.
  const [ra, rb] = await both((e) => e.submit({ type: 'echo', payload: { x: 1 }, index_op: 'create' }).then((r) => r.result, (e) => e.code))
  assert.deepEqual(ra, rb)
})

test('a killed isolated process: the next search is replayed and gives the same results', async () => {
  const [a, b] = await both((e) => e.createIndex('replay', { dims, metric: 'cosine' }))
  const n = 2000
  const ids = Array.from({ length: n }, (_, i) => BigInt(i * 7))
  const vecs = randoms(n * dims, 11)
  await Promise.all([a.upsert(ids, vecs), b.upsert(ids, vecs)])
  await Promise.all([a.remove(ids.slice(0, 10)), b.remove(ids.slice(0, 10))])
  const q = randoms(4 * dims, 5)
  const before = await a.search(q, { k: 20 })
  sameHits(before, await b.search(q, { k: 20 }), 'before')
  for (let round = 0; round < 2; round++) {
    const h0 = await iso.health()
    assert.equal(typeof h0.isolation.pid, 'number')
    process.kill(h0.isolation.pid, 'SIGKILL')
    // Immediately: the search may meet the dying process; it is retried.
    const after = await a.search(q, { k: 20 })
    sameHits(after, before, `after kill ${round}`)
    const h1 = await iso.health()
    assert.equal(h1.isolation.restarts, h0.isolation.restarts + 1)
    assert.notEqual(h1.isolation.pid, h0.isolation.pid)
    assert.equal(h1.indexes.find((i) => i.name === 'replay').count, n - 10)
  }
  // Mutations after the restart reach the rebuilt copy; engine.search too.
  const more = randoms(3 * dims, 12)
  await Promise.all([a.upsert([1n, 2n, 3n], more), b.upsert([1n, 2n, 3n], more)])
  sameHits(await a.search(q, { k: 20 }), await b.search(q, { k: 20 }), 'after mutations')
  // A kill with no search in between: the upsert is not lost either.
  const pid = (await iso.health()).isolation.pid
  process.kill(pid, 'SIGKILL')
  assert.ok(await waitFor(async () => (await iso.health()).isolation.pid !== pid))
  await Promise.all([a.upsert([4n], more.subarray(0, dims)), b.upsert([4n], more.subarray(0, dims))])
  sameHits(await a.search(q, { k: 20 }), await b.search(q, { k: 20 }), 'upsert during restart')
  const [job, jobLocal] = await both((e) => e.submit({ type: 'vector_search', payload: { index: 'replay', k: 3, vector: Array.from(q.subarray(0, dims)) } }))
  assert.deepEqual(job.result.results, jobLocal.result.results)
})

/**
 * Each batch rewrites every vector to one of two states; a search sees one
 * state or the other, never a mix within one result.
 */
async function raceCheck(engine, name) {
  const n = 256
  const ids = Array.from({ length: n }, (_, i) => `r${i}`)
  const index = await engine.createIndex(name, { dims, metric: 'ip' })
  // State s: vector i is e_0 * (s * n + i) so the top ids and their scores
  // tell which state answered.
  const state = (s) => {
    const v = new Float32Array(n * dims)
    for (let i = 0; i < n; i++) v[i * dims] = s * 1000 + i + 1
    return v
  }
  await index.upsert(ids, state(0))
  const q = new Float32Array(dims)
  q[0] = 1
  const searches = []
  const writes = []
  for (let round = 1; round <= 20; round++) {
    writes.push(index.upsert(ids, state(round % 2)))
    // k = n: every vector's state is in each result.
    for (let j = 0; j < 3; j++) searches.push(index.search(q, { k: n }))
  }
  await Promise.all(writes)
  for (const [r] of await Promise.all(searches)) {
    const s = r.scores[0] > 1000 ? 1 : 0
    assert.deepEqual([...r.ids], [...ids].reverse())
    r.scores.forEach((x, i) => assert.equal(x, s * 1000 + n - i, 'a mixed result'))
  }
  // Concurrent upserts may run in any order, but the search copy ends in
  // the host copy's state.
  const [final] = await index.search(q, { k: 1 })
  const [host] = await index.get(['r255'])
  assert.equal(final.scores[0], host.vector[0])
}

test('mutations racing with searches never give mixed results', () => raceCheck(iso, 'race'))

test('requests bigger than a frame go in parts: rebuilds, upserts, removes and searches still equal in-process', async (t) => {
  // maxEnvelopeBytes bounds the rows in one request to the isolated process:
  // 4 KiB makes every request here several frames.
  const small = await Engine.open({ isolation: 'process', device: 'cpu', model: modelDir, maxEnvelopeBytes: 4096 })
  t.after(() => small.close())
  const [a, b] = await Promise.all([small.createIndex('parts', { dims, metric: 'l2' }), local.createIndex('parts', { dims, metric: 'l2' })])
  const n = 600
  const ids = Array.from({ length: n }, (_, i) => `p${i}`)
  const vecs = randoms(n * dims, 21)
  const ns = ids.map((_, i) => (i % 2 ? 'odd' : null))
  await Promise.all([a.upsert(ids, vecs, { namespaces: ns }), b.upsert(ids, vecs, { namespaces: ns })])
  const gone = ids.filter((_, i) => i % 5 === 0)
  assert.deepEqual(await Promise.all([a.remove(gone), b.remove(gone)]), [120, 120])
  const q = randoms(200 * dims, 8) // 12.8 KB of queries: several search frames
  sameHits(await a.search(q, { k: 7 }), await b.search(q, { k: 7 }), 'parts')
  sameHits(await a.search(q, { k: 7, namespace: 'odd' }), await b.search(q, { k: 7, namespace: 'odd' }), 'parts namespace')
  // A rebuild in parts after a kill.
  const pid = (await small.health()).isolation.pid
  process.kill(pid, 'SIGKILL')
  sameHits(await a.search(q, { k: 7 }), await b.search(q, { k: 7 }), 'parts after kill')
  assert.equal((await small.health()).isolation.restarts, 1)
  local.dropIndex('parts')
  // Upserts of several parts are applied whole: racing searches see one
  // state or the other.
  await raceCheck(small, 'race-parts')
})

// The GPU variant: the isolated process's copy lives next to its model on
// the GPU, and answers as an in-process GPU index does.
const gpu = (await addon.health()).cuda_available ? false : 'no CUDA device here: GPU isolated-index test SKIPPED'
if (gpu) console.log(`# ${gpu}`)
test('cuda: an isolated engine keeps its index on its GPU and searches like an in-process GPU index', { skip: gpu }, async (t) => {
  const [isoGpu, localGpu] = await Promise.all([
    Engine.open({ isolation: 'process', device: 'cuda', model: modelDir }),
    Engine.open({ device: 'cuda', model: modelDir }),
  ])
  t.after(() => Promise.all([isoGpu.close(), localGpu.close()]))
  const n = 2000
  const ids = Array.from({ length: n }, (_, i) => `v${i}`)
  const vectors = randoms(n * 384, 11)
  const queries = randoms(8 * 384, 12)
  const results = []
  for (const engine of [isoGpu, localGpu]) {
    const index = await engine.createIndex('g', { dims: 384, metric: 'cosine', dtype: 'fp32' })
    assert.equal(index.device, 'cuda:0')
    await index.upsert(ids, vectors)
    await index.remove(['v3', 'v5'])
    const byText = await engine.search(texts, { index: 'g', k: 5 })
    results.push({ hits: await index.search(queries, { k: 10 }), byText, health: await engine.health() })
  }
  sameHits(results[0].hits, results[1].hits, 'GPU vectors')
  assert.deepEqual(results[0].byText.map((r) => [...r.ids]), results[1].byText.map((r) => [...r.ids]))
  assert.deepEqual(results[0].health.indexes.map((i) => [i.name, i.count, i.device]), [['g', n - 2, 'cuda:0']])
  // A restart rebuilds the GPU copy from the host copy.
  const before = results[0].health.isolation
  process.kill(before.pid, 'SIGKILL')
  assert.ok(await waitFor(async () => (await isoGpu.health()).isolation.restarts > before.restarts), 'the isolated process restarted')
  sameHits(await isoGpu.index('g').search(queries, { k: 10 }), results[1].hits, 'GPU vectors after a restart')
})
