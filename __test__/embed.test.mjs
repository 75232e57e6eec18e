// embed(): the real all-MiniLM-L6-v2 model from JS, against the
// sentence-transformers fixtures, under concurrency, with coded errors.
// Needs the model: `bash scripts/fetch-model.sh` (the test command runs it).
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
const fixtures = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/embeddings.json'), 'utf8')).records
const holdout = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/holdout.json'), 'utf8')).records

assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')
const engine = await Engine.open({ model: modelDir, device: 'cpu' })
test.after(() => engine.close())

const cosine = (a, b) => {
  let dot = 0, na = 0, nb = 0
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
  return dot / Math.sqrt(na * nb)
}
const maxAbsDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)

test('every fixture text matches sentence-transformers (cosine >= 0.99999, |diff| <= 1e-4)', async () => {
  for (const set of [fixtures, holdout]) {
    const vectors = await engine.embed(set.map((r) => r.text))
    assert.equal(vectors.length, set.length)
    set.forEach((r, i) => {
      assert.ok(vectors[i] instanceof Float32Array)
      assert.equal(vectors[i].length, 384)
      const c = cosine(vectors[i], r.embedding)
      assert.ok(c >= 0.99999, `cosine ${c} for ${JSON.stringify(r.text.slice(0, 40))}`)
      assert.ok(maxAbsDiff(vectors[i], r.embedding) <= 1e-4, `diff for ${JSON.stringify(r.text.slice(0, 40))}`)
    })
  }
})

test('a single string resolves to one Float32Array; normalize option is honoured', async () => {
  const r = fixtures.find((x) => x.text === 'hello world')
  const v = await engine.embed('hello world')
  assert.ok(v instanceof Float32Array)
  assert.ok(cosine(v, r.embedding) >= 0.99999)
  const norm = Math.hypot(...v)
  assert.ok(Math.abs(norm - 1) < 1e-5, `default output is normalized (${norm})`)
  const raw = await engine.embed('hello world', { normalize: false })
  assert.ok(maxAbsDiff(raw, r.embedding_raw) <= 1e-4)
  assert.ok(Math.abs(Math.hypot(...raw) - 1) > 1e-3, 'normalize:false keeps the raw pooled vector')
})

test('1,000 concurrent embed calls of mixed lengths each equal the text embedded alone', async () => {
  const texts = Array.from({ length: 1000 }, (_, i) => {
    const base = fixtures[i % fixtures.length].text
    return `${i} ${base}`.slice(0, 20 + ((i * 37) % 600))
  })
  const unique = [...new Set(texts)].slice(0, 60)
  const alone = new Map()
  for (const t of unique) alone.set(t, await engine.embed(t))
  const results = await Promise.all(texts.map((t) => engine.embed(t)))
  assert.equal(results.length, 1000)
  texts.forEach((t, i) => {
    if (alone.has(t)) assert.ok(maxAbsDiff(results[i], alone.get(t)) <= 1e-6, `text ${i} differs when batched`)
  })
  // Order within one call is kept.
  const many = await engine.embed(unique)
  unique.forEach((t, i) => assert.ok(maxAbsDiff(many[i], alone.get(t)) <= 1e-6, `order of ${i}`))
})

test('truncate:false names the over-long text; bad inputs reject with codes and the engine stays usable', async () => {
  const long = 'word '.repeat(400)
  const tooLong = await rejection(engine.embed(['short', long], { truncate: false }))
  assert.equal(tooLong.code, 'E_TOO_LONG')
  assert.match(tooLong.message, /texts\[1\]/)
  const nonString = await rejection(engine.embed(['ok', 42]))
  assert.equal(nonString.code, 'E_INVALID_ARG')
  assert.match(nonString.message, /texts\[1\] must be a string, got a number/)
  assert.equal((await rejection(engine.embed(7))).code, 'E_INVALID_ARG')
  assert.equal((await rejection(engine.embed('x', { normalize: 'yes' }))).code, 'E_INVALID_ARG')
  assert.equal((await engine.embed(['after errors'])).length, 1)
})

test('model errors: missing directory, corrupt safetensors, wrong config.json', async (t) => {
  const tmp = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'cuda-engine-model-'))
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }))
  const missing = await rejection(Engine.open({ model: path.join(tmp, 'nope') }))
  assert.equal(missing.code, 'E_MODEL')
  assert.match(missing.message, /nope/)

  const copy = (name) => {
    const dir = path.join(tmp, name)
    // Copy real files (a symlinked model dir must not be aliased: these
    // copies get corrupted on purpose).
    fs.cpSync(fs.realpathSync(modelDir), dir, { recursive: true, dereference: true, filter: (src) => !src.endsWith('model.safetensors') })
    return dir
  }
  const corrupt = copy('corrupt')
  fs.writeFileSync(path.join(corrupt, 'model.safetensors'), Buffer.from('definitely not safetensors'))
  const c = await rejection(Engine.open({ model: corrupt }))
  assert.equal(c.code, 'E_MODEL')
  assert.match(c.message, /model\.safetensors/)

  const wrong = copy('wrong-config')
  fs.copyFileSync(path.join(modelDir, 'model.safetensors'), path.join(wrong, 'model.safetensors'))
  const cfg = JSON.parse(fs.readFileSync(path.join(wrong, 'config.json'), 'utf8'))
  cfg.hidden_size = 'big'
  fs.writeFileSync(path.join(wrong, 'config.json'), JSON.stringify(cfg))
  const w = await rejection(Engine.open({ model: wrong }))
  assert.equal(w.code, 'E_MODEL')
  assert.match(w.message, /config\.json.*hidden_size/)

  // The engine that was already open is unaffected.
  assert.equal((await engine.embed('still fine')).length, 384)
})

test('the JS thread is never blocked: setInterval ticks while 10,000 texts embed', async () => {
  const texts = Array.from({ length: 10000 }, (_, i) => `tick ${i % 50}`)
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  const t0 = performance.now()
  const vectors = await engine.embed(texts)
  const elapsed = performance.now() - t0
  clearInterval(timer)
  assert.equal(vectors.length, 10000)
  const expected = elapsed / 5
  assert.ok(ticks >= expected * 0.5, `${ticks} ticks in ${elapsed.toFixed(0)} ms (expected ~${expected.toFixed(0)})`)
})

test('submit({type:"embedding"}) returns {model, dims, embeddings} equal to embed()', async () => {
  const r = await engine.submit({ type: 'embedding', payload: { texts: ['hello world', 'café'] } })
  assert.equal(r.ok, true)
  assert.equal(r.backend, 'cpu')
  assert.equal(r.result.model, 'all-MiniLM-L6-v2')
  assert.equal(r.result.dims, 384)
  const direct = await engine.embed(['hello world', 'café'])
  r.result.embeddings.forEach((e, i) => assert.ok(maxAbsDiff(e, direct[i]) <= 1e-6))
  const b64 = Buffer.from(JSON.stringify({ text: 'hello world' })).toString('base64')
  const viaB64 = await engine.submit({ type: 'embed', payload_b64: b64 })
  assert.ok(maxAbsDiff(viaB64.result.embeddings[0], direct[0]) <= 1e-6)
  const bad = await rejection(engine.submit({ type: 'embedding', payload: { texts: ['a', null] } }))
  assert.equal(bad.code, 'E_INVALID_ARG')
  assert.match(bad.message, /payload\.texts\[1\]/)
  const h = await engine.health()
  assert.equal(h.model.name, 'all-MiniLM-L6-v2')
  assert.equal(h.model.dims, 384)
  assert.equal(h.model.max_tokens, 256)
})

test('an aborted embed rejects with E_CANCELLED and the queue keeps serving', async () => {
  const ac = new AbortController()
  const texts = Array.from({ length: 2000 }, (_, i) => `cancel me ${i}`)
  const p = engine.embed(texts, { signal: ac.signal })
  setTimeout(() => ac.abort(), 20)
  const err = await rejection(p)
  assert.equal(err.code, 'E_CANCELLED')
  const timeout = await rejection(engine.embed(texts, { timeoutMs: 10 }))
  assert.equal(timeout.code, 'E_TIMEOUT')
  assert.equal((await engine.embed('next')).length, 384)
})
