// infer() / models(): Open Inference Protocol tensors on the real model, from
// JS (typed arrays in and out), through submit() and through the HTTP service.
// Needs the model (`bash scripts/fetch-model.sh`) and
// tests/fixtures/token_embeddings.json (scripts/make_token_fixtures.py).
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
const fixtures = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/token_embeddings.json'), 'utf8')).records
const H = 384

assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')
const engine = await Engine.open({ model: modelDir, device: 'cpu' })
test.after(() => engine.close())

const out = (res, name) => {
  const t = res.outputs.find((o) => o.name === name)
  assert.ok(t, `no output ${name} in ${res.outputs.map((o) => o.name)}`)
  return t
}
const textInput = (texts) => ({ name: 'text', datatype: 'BYTES', shape: [texts.length], data: texts })

/** Real tokens within `tol` of sentence-transformers; padded positions exactly 0. */
function checkHidden(t, recs, tol = 1e-4) {
  const [batch, seq, h] = t.shape
  assert.equal(batch, recs.length)
  assert.equal(h, H)
  assert.ok(t.data instanceof Float32Array)
  let worst = 0
  recs.forEach((r, b) => {
    for (let s = 0; s < seq; s++) {
      const row = t.data.subarray((b * seq + s) * h, (b * seq + s + 1) * h)
      if (s < r.token_embeddings.length) {
        const ref = r.token_embeddings[s]
        for (let j = 0; j < h; j++) worst = Math.max(worst, Math.abs(row[j] - ref[j]))
      } else {
        assert.ok(row.every((x) => x === 0), `text ${b} padded position ${s} is not 0`)
      }
    }
  })
  assert.ok(worst <= tol, `max |diff| ${worst} > ${tol}`)
  return worst
}

/** Padded [batch, seq] ids and mask of the fixture texts, as plain numbers. */
function padded(recs, extra = 0) {
  const seq = Math.max(...recs.map((r) => r.input_ids.length)) + extra
  const ids = new Array(recs.length * seq).fill(0)
  const mask = new Array(recs.length * seq).fill(0)
  recs.forEach((r, b) => r.input_ids.forEach((id, s) => { ids[b * seq + s] = id; mask[b * seq + s] = 1 }))
  return { seq, ids, mask }
}

test('sentence_embedding of text equals embed() of the same texts', async () => {
  const [a, b] = ['The quick brown fox jumps over the lazy dog.', 'A man is eating food.']
  const res = await engine.infer({ inputs: [textInput([a, b])], outputs: [{ name: 'sentence_embedding' }] })
  assert.equal(res.model_name, 'all-MiniLM-L6-v2')
  assert.equal(typeof res.id, 'string')
  assert.equal(res.outputs.length, 1)
  const se = out(res, 'sentence_embedding')
  assert.deepEqual(se.shape, [2, H])
  assert.equal(se.datatype, 'FP32')
  assert.ok(se.data instanceof Float32Array)
  const [ea, eb] = await engine.embed([a, b])
  assert.deepEqual(se.data.subarray(0, H), ea)
  assert.deepEqual(se.data.subarray(H), eb)
})

test('many texts (tokenized in parallel) equal embed() in order; the first over-long element is the error', async () => {
  const texts = Array.from({ length: 300 }, (_, i) => `sentence ${i} ${'word '.repeat(i % 40)}`)
  const res = await engine.infer({ inputs: [textInput(texts)], outputs: [{ name: 'sentence_embedding' }] })
  const se = out(res, 'sentence_embedding')
  const want = await engine.embed(texts)
  want.forEach((v, i) => assert.deepEqual(se.data.subarray(i * H, (i + 1) * H), v, `#${i}`))
  const long = texts.map((t, i) => (i === 77 || i === 250 ? 'long '.repeat(400) : t))
  const err = await engine.infer({ inputs: [textInput(long)], parameters: { truncate: false } }).catch((e) => e)
  assert.equal(err.code, 'E_INVALID_ARG')
  assert.match(err.message, /input `text`: element 77: /)
})

test('last_hidden_state of the fixture texts matches sentence-transformers token_embeddings (1e-4)', async () => {
  const res = await engine.infer({ id: 'fx', inputs: [textInput(fixtures.map((r) => r.text))] })
  assert.equal(res.id, 'fx')
  assert.deepEqual(res.outputs.map((o) => o.name), ['last_hidden_state', 'sentence_embedding', 'input_ids', 'attention_mask'])
  checkHidden(out(res, 'last_hidden_state'), fixtures)
  const ids = out(res, 'input_ids')
  const mask = out(res, 'attention_mask')
  assert.equal(ids.datatype, 'INT64')
  assert.ok(ids.data instanceof BigInt64Array)
  assert.ok(mask.data instanceof BigInt64Array)
  const seq = ids.shape[1]
  fixtures.forEach((r, b) => {
    assert.deepEqual([...ids.data.subarray(b * seq, b * seq + r.input_ids.length)].map(Number), r.input_ids)
    assert.equal([...mask.data.subarray(b * seq, (b + 1) * seq)].filter((x) => x === 1n).length, r.input_ids.length)
  })
})

test('ids as BigInt64Array, Int32Array, nested arrays and little-endian bytes give the same numbers', async () => {
  const { seq, ids, mask } = padded(fixtures, 3)
  const shape = [fixtures.length, seq]
  const variants = {
    bigint64: { dt: 'INT64', ids: BigInt64Array.from(ids.map(BigInt)), mask: BigInt64Array.from(mask.map(BigInt)) },
    int32: { dt: 'INT32', ids: Int32Array.from(ids), mask: Int32Array.from(mask) },
    nested: { dt: 'INT64', ids: fixtures.map((_, b) => ids.slice(b * seq, (b + 1) * seq)), mask: fixtures.map((_, b) => mask.slice(b * seq, (b + 1) * seq)) },
    bytes: { dt: 'INT64', ids: Buffer.from(BigInt64Array.from(ids.map(BigInt)).buffer), mask: Buffer.from(BigInt64Array.from(mask.map(BigInt)).buffer) },
  }
  for (const [name, v] of Object.entries(variants)) {
    const res = await engine.infer({
      inputs: [
        { name: 'input_ids', datatype: v.dt, shape, data: v.ids },
        { name: 'attention_mask', datatype: v.dt, shape, data: v.mask },
      ],
      outputs: [{ name: 'last_hidden_state' }],
    })
    assert.deepEqual(out(res, 'last_hidden_state').shape, [fixtures.length, seq, H], name)
    checkHidden(out(res, 'last_hidden_state'), fixtures)
  }
})

test('submit({type: "inference"}) gives the same answer as plain JSON arrays', async () => {
  const texts = fixtures.map((r) => r.text)
  const direct = await engine.infer({ inputs: [textInput(texts)] })
  const r = await engine.submit({ id: 'env-9', type: 'inference', payload: { inputs: [textInput(texts)] } })
  assert.equal(r.type, 'inference')
  assert.equal(r.backend, 'cpu')
  assert.equal(r.result.id, 'env-9')
  assert.equal(r.result.model_name, 'all-MiniLM-L6-v2')
  assert.equal(r.result.outputs.length, direct.outputs.length)
  r.result.outputs.forEach((o, i) => {
    const d = direct.outputs[i]
    assert.equal(o.name, d.name)
    assert.deepEqual(o.shape, d.shape)
    assert.equal(o.datatype, d.datatype)
    assert.ok(Array.isArray(o.data), 'JSON arrays through submit')
    assert.deepEqual(o.data, [...d.data].map(Number), o.name)
  })
  // payload_b64 too (how Go/PowerShell clients send it).
  const b64 = Buffer.from(JSON.stringify({ inputs: [textInput(texts.slice(0, 2))], outputs: [{ name: 'sentence_embedding' }] })).toString('base64')
  const viaB64 = await engine.submit({ type: 'infer', payload_b64: b64 })
  assert.deepEqual(viaB64.result.outputs[0].data, [...out(direct, 'sentence_embedding').data.subarray(0, 2 * H)])
})

test('models() and metadata envelopes describe the model in the protocol shape', async () => {
  const models = await engine.models()
  assert.equal(models.length, 1)
  const m = models[0]
  assert.equal(m.name, 'all-MiniLM-L6-v2')
  assert.equal(m.platform, 'cuda-engine')
  assert.deepEqual(m.inputs.map((t) => [t.name, t.datatype, t.shape]), [
    ['input_ids', 'INT64', [-1, -1]],
    ['attention_mask', 'INT64', [-1, -1]],
    ['token_type_ids', 'INT64', [-1, -1]],
    ['text', 'BYTES', [-1]],
  ])
  assert.deepEqual(m.outputs.map((t) => [t.name, t.datatype, t.shape]), [
    ['last_hidden_state', 'FP32', [-1, -1, H]],
    ['sentence_embedding', 'FP32', [-1, H]],
    ['input_ids', 'INT64', [-1, -1]],
    ['attention_mask', 'INT64', [-1, -1]],
  ])
  assert.equal(m.parameters.max_sequence_length, 256)
  assert.deepEqual((await engine.submit({ type: 'inference', payload: {} })).result, { models: [m] })
  assert.deepEqual((await engine.submit({ type: 'inference', payload: { model_name: m.name } })).result, m)
})

test('malformed requests reject with E_INVALID_ARG naming the input; the engine stays usable', async () => {
  const ids = (data, shape = [1, data.length], datatype = 'INT64') => ({ name: 'input_ids', datatype, shape, data })
  const long = [101, ...new Array(300).fill(1000), 102]
  const cases = [
    ['shape/data mismatch', { inputs: [ids([101, 7592, 102], [2, 2])] }, /input `input_ids`: shape \[2, 2\] holds 4 elements but data has 3/],
    ['typed array vs datatype', { inputs: [ids(new Float32Array([101, 102]), [1, 2])] }, /input `input_ids`: datatype INT64 does not match a Float32Array/],
    ['wrong datatype for the input', { inputs: [ids([101, 102], [1, 2], 'FP32')] }, /input `input_ids`: datatype must be INT64 or INT32, got FP32/],
    ['unknown input', { inputs: [ids([101, 102]), { name: 'pixel_values', datatype: 'FP32', shape: [1], data: [0] }] }, /input `pixel_values` is not an input of model `all-MiniLM-L6-v2`/],
    ['id out of range', { inputs: [ids([101, 30522, 102])] }, /input `input_ids`: id 30522 at \[0, 1\] is not in 0\.\.30522/],
    ['over-long sequence', { inputs: [ids(long)] }, /input `input_ids`: sequence 0 has 302 tokens, over the model's limit of 256/],
    ['FP16 data of odd byte length', { inputs: [{ name: 'input_ids', datatype: 'FP16', shape: [1, 3], data: Buffer.alloc(5) }] }, /input `input_ids`: FP16 data is 5 bytes, not a multiple of 2/],
    ['FP16 bits in a Uint16Array parse, then the model rule applies', { inputs: [{ name: 'input_ids', datatype: 'FP16', shape: [1, 2], data: new Uint16Array([0x3c00, 0x4000]) }] }, /input `input_ids`: datatype must be INT64 or INT32, got FP16/],
    ['INT32 out of range', { inputs: [ids([101, 2 ** 40], [1, 2], 'INT32')] }, /input `input_ids`: data\[1\] = 1099511627776 is out of range for INT32/],
    ['BigInt beyond INT64', { inputs: [ids([101n, 2n ** 70n], [1, 2])] }, /input `input_ids`: data\[1\] = .* is out of range for INT64/],
    ['fractional id', { inputs: [ids([101, 1.5])] }, /input `input_ids`: data\[1\] is a number, not a INT64 element/],
    ['negative shape', { inputs: [ids([101, 102], [1, -2])] }, /input `input_ids`: `shape` must be an array of non-negative integers/],
    ['unknown datatype', { inputs: [ids([101, 102], [1, 2], 'INT128')] }, /input `input_ids`: datatype `INT128` is not one of/],
    ['text with a number', { inputs: [{ name: 'text', datatype: 'BYTES', shape: [1], data: [42] }] }, /input `text`: data\[0\] is an integer, not a BYTES element/],
    ['mask shape', { inputs: [ids([101, 102]), { name: 'attention_mask', datatype: 'INT64', shape: [2, 1], data: [1, 1] }] }, /input `attention_mask`: shape \[2, 1\] must equal/],
    ['unknown output', { inputs: [ids([101, 102])], outputs: [{ name: 'logits' }] }, /output `logits` is not an output/],
    ['no inputs', { inputs: [] }, /`inputs` is empty/],
    ['not an object', 'hello', /infer\(\) takes a request object/],
  ]
  for (const [what, req, re] of cases) {
    const err = await rejection(engine.infer(req))
    assert.equal(err.code, 'E_INVALID_ARG', `${what}: ${err.message}`)
    assert.match(err.message, re, what)
    const viaSubmit = typeof req === 'object' && !what.includes('typed') && !what.includes('FP16') && !what.includes('BigInt')
    if (viaSubmit) {
      const e2 = await rejection(engine.submit({ type: 'inference', payload: req }))
      assert.equal(e2.code, 'E_INVALID_ARG', `${what} (submit): ${e2.message}`)
    }
  }
  const h = await engine.health()
  assert.equal(h.queue.depth, 0)
  const ok = await engine.infer({ inputs: [ids([101, 7592, 2088, 102])], outputs: [{ name: 'sentence_embedding' }] })
  assert.deepEqual(out(ok, 'sentence_embedding').shape, [1, H])
})

test('an unknown model without a worker is E_UNKNOWN_MODEL; signal and timeout apply', async () => {
  const req = { model_name: 'resnet50', inputs: [textInput(['hi'])] }
  const e = await rejection(engine.infer(req))
  assert.equal(e.code, 'E_UNKNOWN_MODEL')
  assert.match(e.message, /`resnet50`/)
  assert.equal((await rejection(engine.submit({ type: 'inference', payload: req }))).code, 'E_UNKNOWN_MODEL')
  const aborted = await rejection(engine.infer({ inputs: [textInput(['hi'])] }, { signal: AbortSignal.abort() }))
  assert.equal(aborted.code, 'E_CANCELLED')
  const bad = await rejection(engine.infer({ inputs: [textInput(['hi'])] }, { target: 'gpu' }))
  assert.equal(bad.code, 'E_INVALID_ARG')
  // Long enough to outlast 1 ms on any machine: 64 texts of ~250 tokens.
  const many = new Array(64).fill('word '.repeat(250))
  const slow = await rejection(engine.infer({ inputs: [textInput(many)] }, { timeoutMs: 1 }))
  assert.equal(slow.code, 'E_TIMEOUT')
  assert.equal(out(await engine.infer({ inputs: [textInput(['still fine'])] }), 'sentence_embedding').shape[0], 1)
})

test('the module-level infer() and models() use the default engine', async () => {
  process.env.CUDA_ENGINE_MODEL ??= modelDir
  const res = await addon.infer({ inputs: [textInput(['hello world'])], outputs: [{ name: 'sentence_embedding' }] })
  const want = fixtures.find((r) => r.text === 'hello world').sentence_embedding
  const got = out(res, 'sentence_embedding').data
  // The default engine uses device 'auto': CUDA fp16 where a GPU is present.
  if ((await addon.health()).compute?.backend === 'cuda') {
    const dot = got.reduce((s, x, i) => s + x * want[i], 0)
    assert.ok(dot >= 0.9995, `cosine ${dot} on the GPU`)
  } else {
    assert.ok(got.every((x, i) => Math.abs(x - want[i]) < 1e-5))
  }
  // The model is named after its directory (CUDA_ENGINE_MODEL here).
  assert.equal((await addon.models())[0].name, path.basename(process.env.CUDA_ENGINE_MODEL))
})

test('POST /api/v1/submit with an inference envelope (bin/cuda-service.mjs)', async () => {
  const child = spawn(process.execPath, [path.join(root, 'bin/cuda-service.mjs'), '--port', '0'], {
    env: { ...process.env, CUDA_ENGINE_OPTIONS: JSON.stringify({ model: modelDir, device: 'cpu' }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  try {
    const url = await new Promise((resolve, reject) => {
      readline.createInterface({ input: child.stdout }).once('line', (l) => resolve(JSON.parse(l).listening))
      child.once('exit', (code) => reject(new Error(`service exited ${code}: ${stderr}`)))
    })
    const post = (env) => fetch(`${url}/api/v1/submit`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(env) })
    const texts = ['hello world', 'A man is eating food.']
    const res = await post({ type: 'inference', payload: { inputs: [textInput(texts)], outputs: [{ name: 'sentence_embedding' }] } })
    assert.equal(res.status, 200)
    const body = await res.json()
    const local = await engine.infer({ inputs: [textInput(texts)], outputs: [{ name: 'sentence_embedding' }] })
    assert.deepEqual(body.result.outputs[0].data, [...out(local, 'sentence_embedding').data])
    const bad = await post({ type: 'inference', payload: { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 3], data: [101, 102] }] } })
    assert.equal(bad.status, 400)
    const err = await bad.json()
    assert.equal(err.error.code, 'E_INVALID_ARG')
    assert.match(err.error.message, /input `input_ids`/)
    const unknown = await post({ type: 'inference', payload: { model_name: 'nope', inputs: [textInput(['x'])] } })
    assert.equal((await unknown.json()).error.code, 'E_UNKNOWN_MODEL')
  } finally {
    child.kill('SIGTERM')
  }
})
