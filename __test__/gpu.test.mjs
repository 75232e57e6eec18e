// The CUDA backend from JS: runs where a CUDA device initialises (the H100
// machine, see docs/gpu.md) and says plainly that it skipped elsewhere (CI).
// Model: $CUDA_ENGINE_MODEL, else models/all-MiniLM-L6-v2.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon } from './helpers.mjs'

const { Engine, health } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')
const fixtures = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/embeddings.json'), 'utf8')).records
const holdout = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/holdout.json'), 'utf8')).records

const h = await health()
const skip = h.cuda_available ? false : `no CUDA device here (${h.errors.join('; ')}): GPU tests SKIPPED`
if (skip) console.log(`# ${skip}`)

const cosine = (a, b) => {
  let dot = 0, na = 0, nb = 0
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
  return dot / Math.sqrt(na * nb)
}

test('fp16 on the GPU matches sentence-transformers fp32 (cosine >= 0.9995), batched == alone', { skip }, async (t) => {
  const engine = await Engine.open({ model: modelDir, device: 'cuda', dtype: 'fp16' })
  t.after(() => engine.close())
  const info = await engine.health()
  assert.equal(info.compute.backend, 'cuda')
  assert.equal(info.compute.dtype, 'fp16')
  let worst = 1
  for (const set of [fixtures, holdout]) {
    const vectors = await engine.embed(set.map((r) => r.text))
    set.forEach((r, i) => (worst = Math.min(worst, cosine(vectors[i], r.embedding))))
    for (const [i, r] of set.slice(0, 20).entries()) {
      const alone = await engine.embed(r.text)
      assert.ok(cosine(alone, vectors[i]) >= 0.9999, `batched vs alone for ${JSON.stringify(r.text.slice(0, 30))}`)
    }
  }
  console.log(`# worst fp16 cosine vs sentence-transformers: ${worst.toFixed(7)}`)
  assert.ok(worst >= 0.9995, `worst cosine ${worst}`)
  const r = await engine.submit({ type: 'embedding', payload: { text: 'hello world' } })
  assert.equal(r.backend, 'cuda')
})

test('infer gives the same answer on the CPU and on the GPU (fp16 tolerance)', { skip }, async (t) => {
  const cpu = await Engine.open({ model: modelDir, device: 'cpu' })
  const gpu = await Engine.open({ model: modelDir, device: 'cuda' })
  t.after(async () => { await cpu.close(); await gpu.close() })
  const texts = fixtures.slice(0, 12).map((r) => r.text)
  const request = {
    inputs: [{ name: 'text', datatype: 'BYTES', shape: [texts.length], data: texts }],
    outputs: [{ name: 'sentence_embedding' }, { name: 'last_hidden_state' }],
  }
  const [a, b] = [await cpu.infer(request), await gpu.infer(request)]
  const get = (res, name) => res.outputs.find((o) => o.name === name)
  const ea = get(a, 'sentence_embedding'), eb = get(b, 'sentence_embedding')
  assert.deepEqual(ea.shape, eb.shape)
  for (let i = 0; i < texts.length; i++) {
    const c = cosine(ea.data.subarray(i * 384, (i + 1) * 384), eb.data.subarray(i * 384, (i + 1) * 384))
    assert.ok(c >= 0.9995, `sentence_embedding ${i}: cosine ${c}`)
  }
  const ha = get(a, 'last_hidden_state'), hb = get(b, 'last_hidden_state')
  assert.deepEqual(ha.shape, hb.shape)
  let worstRow = 1
  const rows = ha.shape[0] * ha.shape[1]
  for (let r = 0; r < rows; r++) {
    const x = ha.data.subarray(r * 384, (r + 1) * 384), y = hb.data.subarray(r * 384, (r + 1) * 384)
    if (x.every((v) => v === 0)) { assert.ok(y.every((v) => v === 0), 'padding is 0 on both'); continue }
    worstRow = Math.min(worstRow, cosine(x, y))
  }
  console.log(`# worst last_hidden_state token cosine CPU vs GPU: ${worstRow.toFixed(6)}`)
  assert.ok(worstRow >= 0.999, `token cosine ${worstRow}`)
  // And through submit, as JSON arrays.
  const viaSubmit = await gpu.submit({ type: 'inference', payload: request })
  const se = viaSubmit.result.outputs.find((o) => o.name === 'sentence_embedding')
  assert.ok(cosine(Float32Array.from(se.data.slice(0, 384)), eb.data.subarray(0, 384)) > 0.99999)
})

test('health on the GPU machine: device listed, compute memory reported', { skip }, async (t) => {
  const engine = await Engine.open({ model: modelDir })
  t.after(() => engine.close())
  await engine.embed('warm up')
  const hh = await engine.health()
  assert.equal(hh.status, 'ok', hh.errors.join('; '))
  assert.equal(hh.backend, 'cuda')
  assert.ok(hh.devices[0].memory_total > 0)
  assert.ok(hh.compute.memory_bytes > 0)
  console.log(`# ${JSON.stringify({ devices: hh.devices, compute: hh.compute })}`)
})

/** Is the model's safetensors file fp32 (the reference weights)? */
function weightsAreFp32() {
  const fd = fs.openSync(path.join(modelDir, 'model.safetensors'), 'r')
  try {
    const len = Buffer.alloc(8)
    fs.readSync(fd, len, 0, 8, 0)
    const header = Buffer.alloc(Number(len.readBigUInt64LE(0)))
    fs.readSync(fd, header, 0, header.length, 8)
    const meta = JSON.parse(header.toString('utf8'))
    return Object.entries(meta).some(([k, v]) => k !== '__metadata__' && v.dtype === 'F32' && v.shape.length === 2)
  } finally {
    fs.closeSync(fd)
  }
}

const fp32Skip = skip || (weightsAreFp32() ? false : 'the model file is not fp32 (an fp16 copy): fp32-mode accuracy needs the reference weights')
test('fp32 mode on the GPU matches sentence-transformers (cosine >= 0.99999)', { skip: fp32Skip }, async (t) => {
  const engine = await Engine.open({ model: modelDir, device: 'cuda', dtype: 'fp32' })
  t.after(() => engine.close())
  assert.equal((await engine.health()).compute.dtype, 'fp32')
  let worst = 1
  for (const set of [fixtures, holdout]) {
    const vectors = await engine.embed(set.map((r) => r.text))
    set.forEach((r, i) => (worst = Math.min(worst, cosine(vectors[i], r.embedding))))
  }
  console.log(`# worst fp32 cosine vs sentence-transformers: ${worst.toFixed(8)}`)
  assert.ok(worst >= 0.99999, `worst cosine ${worst}`)
})
