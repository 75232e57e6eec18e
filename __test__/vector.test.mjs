// VectorIndex and engine.search from JS (docs/vector-search.md): exact
// results against a brute force computed here, argument errors with codes,
// namespaces, concurrency, the engine's named indexes and `vector_search`
// jobs. CPU indexes always; the same checks on a GPU index where CUDA works.
import test from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection, randoms } from './helpers.mjs'

const { Engine, VectorIndex, health } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')

const h = await health()
const gpuSkip = h.cuda_available ? false : `no CUDA device here: GPU vector tests SKIPPED`
if (gpuSkip) console.log(`# ${gpuSkip}`)

function normalized(v) {
  let n = 0
  for (const x of v) n += x * x
  n = Math.sqrt(n)
  return v.map((x) => x / n)
}

/** Exact top-k in float64: [{ i, s }] best first, ties by index. */
function brute(data, dims, q, k, metric) {
  const n = data.length / dims
  const scored = []
  for (let i = 0; i < n; i++) {
    let s = 0
    for (let j = 0; j < dims; j++) {
      const x = data[i * dims + j]
      s += metric === 'l2' ? -((x - q[j]) ** 2) : x * q[j]
    }
    scored.push({ i, s })
  }
  scored.sort((a, b) => b.s - a.s || a.i - b.i)
  return scored.slice(0, k)
}

for (const device of ['cpu', 'cuda']) {
  const skip = device === 'cuda' ? gpuSkip : false

  test(`${device}: search equals brute force for every metric; scores best first`, { skip }, async () => {
    const dims = 32, n = 3000, k = 8
    for (const metric of ['cosine', 'ip', 'l2']) {
      const index = await VectorIndex.create({ dims, metric, dtype: 'fp32', device })
      assert.equal(index.device, device === 'cpu' ? 'cpu' : 'cuda:0')
      const data = randoms(n * dims, 7)
      const ids = Array.from({ length: n }, (_, i) => `v${i}`)
      await index.upsert(ids, data)
      assert.equal(index.size, n)
      const rows = metric === 'cosine' ? new Float32Array(n * dims) : data
      if (metric === 'cosine') {
        for (let i = 0; i < n; i++) rows.set(normalized(data.subarray(i * dims, (i + 1) * dims)), i * dims)
      }
      const queries = randoms(4 * dims, 11)
      const res = await index.search(queries, { k })
      assert.equal(res.length, 4)
      for (let qi = 0; qi < 4; qi++) {
        let q = queries.subarray(qi * dims, (qi + 1) * dims)
        if (metric === 'cosine') q = normalized(q)
        const want = brute(rows, dims, q, k, metric)
        assert.deepEqual(res[qi].ids, want.map((w) => `v${w.i}`), `${metric} query ${qi}`)
        assert.ok(res[qi].scores instanceof Float32Array)
        for (let j = 0; j < k; j++) {
          const expect = metric === 'l2' ? -want[j].s : want[j].s
          assert.ok(Math.abs(res[qi].scores[j] - expect) < 1e-4, `${metric} score ${res[qi].scores[j]} vs ${expect}`)
        }
      }
    }
  })

  test(`${device}: bigint ids, replace, remove, get, namespaces, ties in insertion order`, { skip }, async () => {
    const index = await VectorIndex.create({ dims: 4, metric: 'ip', dtype: 'fp32', device })
    const vecs = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0].map(Number)
    await index.upsert([30n, 10n, 20n], new Float32Array(vecs), { namespaces: ['a', null, 'a'] })
    let [r] = await index.search(new Float32Array([1, 0, 0, 0]), { k: 3 })
    assert.ok(r.ids instanceof BigUint64Array)
    assert.deepEqual([...r.ids], [30n, 10n, 20n]) // 30 and 10 tie: insertion order
    ;[r] = await index.search(new Float32Array([1, 0, 0, 0]), { k: 3, namespace: 'a' })
    assert.deepEqual([...r.ids], [30n, 20n])
    ;[r] = await index.search(new Float32Array([1, 0, 0, 0]), { k: 3, namespace: 'nobody' })
    assert.equal(r.ids.length, 0)
    // Replace 20 with a winner; it keeps its id, the count stays.
    await index.upsert([20n], [new Float32Array([5, 0, 0, 0])])
    assert.equal(index.size, 3)
    ;[r] = await index.search(new Float32Array([1, 0, 0, 0]), { k: 1 })
    assert.deepEqual([...r.ids], [20n])
    assert.equal(r.scores[0], 5)
    assert.equal(await index.remove([20n, 99n]), 1)
    ;[r] = await index.search(new Float32Array([1, 0, 0, 0]), { k: 3 })
    assert.deepEqual([...r.ids], [30n, 10n])
    const got = await index.get([10n, 20n, 30n])
    assert.deepEqual([...got[0].vector], [1, 0, 0, 0])
    assert.equal(got[0].namespace, null)
    assert.equal(got[1], null)
    assert.equal(got[2].namespace, 'a')
    const info = await index.info()
    assert.equal(info.count, 2)
    assert.equal(info.namespaces, 1)
    assert.ok(info.bytes > 0)
  })
}

test('bad arguments reject with E_INVALID_ARG naming the field, and change nothing', async () => {
  const index = await VectorIndex.create({ dims: 3, device: 'cpu' })
  await index.upsert(['a'], new Float32Array([1, 2, 3]))
  const cases = [
    [() => index.upsert(['b'], new Float32Array([1, 2])), /`vectors` has 2 values/],
    [() => index.upsert(['b'], new Float32Array([1, NaN, 3])), /`vectors\[0\]\[1\]` is NaN/],
    [() => index.upsert(['b', 'c'], new Float32Array([1, 2, 3])), /holds 1 vectors but `ids` has 2/],
    [() => index.upsert([1n], new Float32Array([1, 2, 3])), /`ids\[0\]` is a bigint but this index's ids are strings/],
    [() => index.upsert([{}], new Float32Array([1, 2, 3])), /`ids\[0\]` must be a string or a bigint/],
    [() => index.upsert(['b'], [1, 2, 3]), /`vectors\[0\]` must be a Float32Array/],
    [() => index.upsert(['b'], new Float64Array(3)), /must be a Float32Array/],
    [() => index.upsert(['b'], new Float32Array(3), { namespace: ['x'] }), /`options.namespace` is not an option \(did you mean `namespaces`\?\)/],
    [() => index.upsert(['b'], new Float32Array([1, 1, 1]), { namespaces: [5] }), /`options.namespaces\[0\]` must be a string/],
    [() => index.search(new Float32Array(3), { k: 0 }), /`options.k` must be an integer/],
    [() => index.search(new Float32Array(3), { k: 2049 }), /`options.k` must be an integer in 1..=2048/],
    [() => index.search(new Float32Array(3), { kk: 1 }), /`options.kk` is not an option \(did you mean `k`\?\)/],
    [() => index.search(new Float32Array(4)), /`queries` has 4 values/],
    [() => index.search(new Float32Array([Infinity, 0, 0])), /`queries\[0\]\[0\]` is inf/],
    [() => index.search('hello'), /`queries` must be a Float32Array/],
    [() => index.remove('a'), /`ids` must be an array/],
    [() => index.upsert(['b'], new Float32Array([0, 0, 0])), /all zeros/],
  ]
  for (const [call, re] of cases) {
    const err = await rejection(call())
    assert.equal(err.code, 'E_INVALID_ARG', `${re}: ${err.message}`)
    assert.match(err.message, re)
  }
  const create = [
    [{ dims: 3, metrik: 'ip' }, /`options.metrik` is not an option \(did you mean `metric`\?\)/],
    [{ dims: 3, metric: 'dot' }, /`options.metric` must be 'cosine', 'ip' or 'l2'/],
    [{ dims: 0 }, /`options.dims`/],
    [{}, /`options.dims` is required/],
    [{ dims: 3, device: 'gpu' }, /`options.device`/],
  ]
  for (const [opts, re] of create) {
    const err = await rejection(VectorIndex.create(opts))
    assert.equal(err.code, 'E_INVALID_ARG', err.message)
    assert.match(err.message, re)
  }
  assert.equal((await rejection(VectorIndex.create())).code, 'E_INVALID_ARG')
  assert.equal(index.size, 1)
})

test('hostile arguments: throwing getters, Proxies, huge sparse arrays settle with a code', async () => {
  const index = await VectorIndex.create({ dims: 2, device: 'cpu' })
  const throwing = Object.defineProperty([], 0, { get() { throw new Error('boom') } })
  throwing.length = 1
  const huge = []
  huge.length = 2 ** 32 - 1
  const proxy = new Proxy({}, { ownKeys() { throw new Error('trap') } })
  const calls = [
    index.upsert(throwing, new Float32Array(2)),
    index.upsert(huge, new Float32Array(2)),
    index.upsert(['a'], huge),
    index.search(new Float32Array(2), proxy),
    index.search(huge),
    index.remove(huge),
    index.get(new Proxy([], { get() { throw new Error('trap') } })),
    VectorIndex.create(proxy),
  ]
  const errors = await Promise.all(calls.map((p) => p.then(() => new Error('resolved'), (e) => e)))
  for (const err of errors) {
    assert.ok(['E_INVALID_ARG', 'E_TOO_LARGE'].includes(err.code), `${err.code}: ${err.message}`)
  }
})

test('searches during upserts see whole upserts only, and never mix results', async () => {
  const dims = 8
  const index = await VectorIndex.create({ dims, metric: 'ip', dtype: 'fp32', device: 'cpu' })
  // Each batch b holds 100 vectors whose first value is b: a search for
  // e0 sees the best vector of the newest whole batch.
  const batch = (b) => {
    const v = new Float32Array(100 * dims)
    for (let i = 0; i < 100; i++) { v[i * dims] = b; v[i * dims + 1] = i / 1000 }
    return v
  }
  const writes = []
  const reads = []
  for (let b = 1; b <= 40; b++) {
    writes.push(index.upsert(Array.from({ length: 100 }, (_, i) => `b${b}-${i}`), batch(b)))
    reads.push(index.search(new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]), { k: 100 }))
  }
  await Promise.all(writes)
  for (const [r] of await Promise.all(reads)) {
    if (r.ids.length === 0) continue
    const top = r.ids[0].split('-')[0]
    // All 100 hits are the one newest batch's (a half batch would show less).
    assert.equal(r.ids.filter((id) => id.startsWith(top + '-')).length, 100)
  }
  assert.equal(index.size, 4000)
})

test('engine: named indexes, engine.search embeds and searches, submit vector_search, health lists them', async (t) => {
  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  t.after(() => engine.close())
  const texts = ['the cat sat on the mat', 'stock markets fell sharply today', 'a recipe for tomato soup', 'the dog chased the ball']
  const index = await engine.createIndex('docs', { dims: 384, dtype: 'fp32', device: 'auto' })
  assert.equal(index.device, 'cpu')
  await index.upsert(texts.map((_, i) => `t${i}`), await engine.embed(texts), { namespaces: ['pets', null, null, 'pets'] })
  assert.equal(engine.index('docs').size, 4)
  assert.equal(engine.index('nope'), null)
  const one = await engine.search('a kitten on a rug', { index: 'docs', k: 2 })
  assert.deepEqual(one.ids, ['t0', 't3'])
  assert.ok(one.scores[0] > one.scores[1])
  const many = await engine.search(['soup', 'finance news'], { index: 'docs', k: 1 })
  assert.deepEqual(many.map((r) => r.ids[0]), ['t2', 't1'])
  const ns = await engine.search('finance news', { index: 'docs', k: 4, namespace: 'pets' })
  assert.deepEqual([...ns.ids].sort(), ['t0', 't3'])
  // The same through a job envelope, by text and by vector.
  const job = await engine.submit({ type: 'vector_search', payload: { index: 'docs', k: 1, text: 'tomato' } })
  assert.equal(job.type, 'vector_search')
  assert.deepEqual(job.result.results[0].ids, ['t2'])
  const vec = Array.from(await engine.embed('tomato'))
  const byVec = await engine.submit({ type: 'vector_search', payload: { index: 'docs', k: 1, vector: vec } })
  assert.deepEqual(byVec.result.results[0].ids, ['t2'])
  assert.ok(Math.abs(byVec.result.results[0].scores[0] - job.result.results[0].scores[0]) < 1e-5)
  // Errors name the field.
  let err = await rejection(engine.search('x', { index: 'missing' }))
  assert.equal(err.code, 'E_INVALID_ARG')
  assert.match(err.message, /no vector index named "missing" \(it has: docs\)/)
  err = await rejection(engine.search('x', { k: 3 }))
  assert.match(err.message, /`options.index`/)
  err = await rejection(engine.search('x', { index: 'docs', kk: 3 }))
  assert.match(err.message, /`options.kk` is not an option/)
  err = await rejection(engine.submit({ type: 'vector_search', payload: { index: 'docs', text: 'x', vector: [1] } }))
  assert.equal(err.code, 'E_INVALID_ARG')
  err = await rejection(engine.createIndex('docs', { dims: 3 }))
  assert.match(err.message, /already has an index named "docs"/)
  err = await rejection(engine.createIndex('bad name!', { dims: 3 }))
  assert.match(err.message, /`name` must be/)
  const small = await engine.createIndex('small', { dims: 3, device: 'cpu' })
  err = await rejection(engine.search('x', { index: 'small' }))
  assert.match(err.message, /holds 3-dimensional vectors but the model embeds 384/)
  assert.equal(small.dims, 3)
  const info = await engine.health()
  assert.deepEqual(info.indexes.map((i) => [i.name, i.count, i.dims, i.device]), [['docs', 4, 384, 'cpu'], ['small', 0, 3, 'cpu']])
  assert.equal(engine.dropIndex('small'), true)
  assert.equal(engine.dropIndex('small'), false)
  // An AbortSignal that already fired cancels the call.
  err = await rejection(engine.search('x', { index: 'docs', signal: AbortSignal.abort() }))
  assert.equal(err.code, 'E_CANCELLED')
})

test('cuda: an index next to the model runs on its GPU', { skip: gpuSkip }, async (t) => {
  const engine = await Engine.open({ model: modelDir, device: 'cuda' })
  t.after(() => engine.close())
  const index = await engine.createIndex('docs', { dims: 384 })
  assert.equal(index.device, 'cuda:0')
  const texts = ['the cat sat on the mat', 'stock markets fell sharply today', 'a recipe for tomato soup']
  await index.upsert(['a', 'b', 'c'], await engine.embed(texts))
  const r = await engine.search('tomato soup recipe', { index: 'docs', k: 1 })
  assert.deepEqual(r.ids, ['c'])
  const info = await engine.health()
  assert.equal(info.indexes[0].device, 'cuda:0')
})

test('save → load gives identical results; a damaged file is E_INDEX; engine.loadIndex', async (t) => {
  const fs = await import('node:fs')
  const os = await import('node:os')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vector-test-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const dims = 16, n = 500
  for (const dtype of ['fp16', 'fp32']) {
    const index = await VectorIndex.create({ dims, dtype, device: 'cpu' })
    await index.upsert(Array.from({ length: n }, (_, i) => BigInt(i * 7)), randoms(n * dims, 3), {
      namespaces: Array.from({ length: n }, (_, i) => (i % 2 ? 'odd' : null)),
    })
    await index.remove([7n, 14n])
    const file = path.join(dir, `${dtype}.cevi`)
    const saved = await index.save(file)
    assert.equal(saved.count, n - 2)
    assert.equal(saved.bytes, fs.statSync(file).size)
    assert.match(saved.sha256, /^[0-9a-f]{64}$/)
    assert.deepEqual(fs.readdirSync(dir).filter((f) => !f.endsWith('.cevi')), []) // no temp file left
    const loaded = await VectorIndex.load(file, { device: 'cpu' })
    assert.equal(loaded.size, n - 2)
    assert.equal(loaded.dtype, dtype)
    const q = randoms(5 * dims, 9)
    for (const namespace of [undefined, 'odd']) {
      const [a, b] = [await index.search(q, { k: 20, namespace }), await loaded.search(q, { k: 20, namespace })]
      assert.deepEqual(b.map((r) => [...r.ids]), a.map((r) => [...r.ids]))
      assert.deepEqual(b.map((r) => [...r.scores]), a.map((r) => [...r.scores]))
    }
  }
  const good = fs.readFileSync(path.join(dir, 'fp32.cevi'))
  const cut = path.join(dir, 'cut.bin')
  fs.writeFileSync(cut, good.subarray(0, good.length >> 1))
  let err = await rejection(VectorIndex.load(cut))
  assert.equal(err.code, 'E_INDEX')
  const flipped = Buffer.from(good)
  flipped[100] ^= 0x40
  fs.writeFileSync(cut, flipped)
  err = await rejection(VectorIndex.load(cut))
  assert.equal(err.code, 'E_INDEX')
  err = await rejection(VectorIndex.load(path.join(dir, 'missing.cevi')))
  assert.equal(err.code, 'E_INDEX')
  err = await rejection(VectorIndex.load(42))
  assert.equal(err.code, 'E_INVALID_ARG')
  err = await rejection(VectorIndex.load(cut, { devise: 'cpu' }))
  assert.match(err.message, /did you mean `device`/)

  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  t.after(() => engine.close())
  const idx = await engine.loadIndex('saved', path.join(dir, 'fp16.cevi'))
  assert.equal(idx.size, n - 2)
  assert.equal(engine.index('saved').dims, dims)
  err = await rejection(engine.loadIndex('saved', path.join(dir, 'fp16.cevi')))
  assert.match(err.message, /already has an index named "saved"/)
})

test('cuda-service --index NAME=PATH serves POST /api/v1/search and vector_search jobs', async (t) => {
  const fs = await import('node:fs')
  const os = await import('node:os')
  const { spawn } = await import('node:child_process')
  const readline = await import('node:readline')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vector-svc-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  const texts = ['the cat sat on the mat', 'stock markets fell sharply today', 'a recipe for tomato soup']
  const index = await VectorIndex.create({ dims: 384, device: 'cpu' })
  await index.upsert(['cat', 'stocks', 'soup'], await engine.embed(texts))
  await engine.close()
  const file = path.join(dir, 'docs.cevi')
  await index.save(file)
  const bin = path.join(root, 'bin/cuda-service.mjs')
  const options = JSON.stringify({ model: modelDir, device: 'cpu' })
  const start = (args) => {
    const child = spawn(process.execPath, [bin, '--port', '0', '--no-log', '--options', options, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const url = new Promise((resolve, reject) => {
      readline.createInterface({ input: child.stdout }).once('line', (l) => resolve(JSON.parse(l).listening))
      child.once('exit', (code) => reject(Object.assign(new Error(`exited ${code}: ${stderr}`), { code, stderr: () => stderr })))
    })
    return { child, url }
  }
  const svc = start(['--index', `docs=${file}`])
  t.after(() => svc.child.kill('SIGTERM'))
  const url = await svc.url
  const search = async (body) => {
    const res = await fetch(`${url}/api/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, json: await res.json() }
  }
  let r = await search({ index: 'docs', k: 2, text: 'how do I make soup' })
  assert.equal(r.status, 200)
  assert.deepEqual(r.json.results[0].ids[0], 'soup')
  assert.equal(r.json.results[0].scores.length, 2)
  r = await search({ index: 'docs', texts: ['kitten', 'shares dropped'], k: 1 })
  assert.deepEqual(r.json.results.map((x) => x.ids[0]), ['cat', 'stocks'])
  r = await search({ index: 'nope', text: 'x' })
  assert.equal(r.status, 400)
  assert.equal(r.json.error.code, 'E_INVALID_ARG')
  const job = await fetch(`${url}/api/v1/submit`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'vector_search', payload: { index: 'docs', text: 'soup', k: 1 } }) })
  assert.deepEqual((await job.json()).result.results[0].ids, ['soup'])
  const health = await (await fetch(`${url}/api/v1/health`)).json()
  assert.deepEqual(health.indexes.map((i) => [i.name, i.count]), [['docs', 3]])
  // A damaged index file: the service does not start, and says why.
  fs.writeFileSync(path.join(dir, 'bad.cevi'), 'CEVI nonsense')
  const bad = start(['--index', `docs=${path.join(dir, 'bad.cevi')}`])
  const err = await bad.url.then(() => null, (e) => e)
  assert.ok(err, 'the service must not start with a damaged index')
  assert.equal(err.code, 1)
  assert.match(err.stderr(), /E_INDEX/)
})
