// `cuda-worker --grpc` (docs/grpc.md "Server") from a real gRPC client:
// @grpc/grpc-js with @grpc/proto-loader, loading the repo's proto/ files.
// Answers are compared with the in-process addon (same model, same texts).
// Also: the Python tritonclient against the same server
// (tests/grpc_tritonclient.py), and the worker-protocol tests of
// __test__/worker.test.mjs run again with cuda-grpc-shim as the worker
// binary, in front of a server.
import test from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, require } from './helpers.mjs'

const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')

function bin(name) {
  const candidates = [path.join(root, 'target/release', name), path.join(root, 'target/debug', name)]
  const found = candidates.find((p) => fs.existsSync(p))
  assert.ok(found, `${name} is not built (looked in ${candidates.join(', ')}); run cargo build --release -p cuda-worker`)
  return found
}
const workerBin = bin('cuda-worker')
const shimBin = bin('cuda-grpc-shim')

const MiB = 1 << 20
/** The shared server's envelope and message limit: a 64 MiB payload fits as base64. */
const LIMIT = 96 * MiB

const defs = protoLoader.loadSync(
  ['cuda_engine/v1/engine.proto', 'inference/open_inference.proto', 'grpc/health/v1/health.proto'],
  { includeDirs: [path.join(root, 'proto')], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
)
const pkg = grpc.loadPackageDefinition(defs)
const clientOptions = { 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 }

/** Start `cuda-worker --grpc 127.0.0.1:0 ...`; resolves once it printed its address. */
function startServer(t, { options = {}, args = [], env = {} } = {}) {
  const childEnv = { ...process.env, ...env }
  delete childEnv.CUDA_WORKER_PATH
  const proc = spawn(
    workerBin,
    ['--grpc', '127.0.0.1:0', '--options', JSON.stringify({ model: modelDir, device: 'cpu', ...options }), ...args],
    { cwd: root, env: childEnv, stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })))
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
  })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start: ${stderr}`)), 60_000)
    proc.stderr.on('data', (d) => {
      stderr += d
      const m = /grpc listening on ([^\s]+)/.exec(stderr)
      if (m) {
        clearTimeout(timer)
        resolve({ proc, addr: m[1], port: Number(m[1].split(':').pop()), exited, stderr: () => stderr })
      }
    })
    exited.then(({ code }) => reject(new Error(`the server exited (${code}) before listening: ${stderr}`)))
  })
}

function clients(addr, creds = grpc.credentials.createInsecure(), extra = {}) {
  const o = { ...clientOptions, ...extra }
  return {
    engine: new pkg.cuda_engine.v1.Engine(addr, creds, o),
    oip: new pkg.inference.GRPCInferenceService(addr, creds, o),
    health: new pkg.grpc.health.v1.Health(addr, creds, o),
    close() {
      this.engine.close()
      this.oip.close()
      this.health.close()
    },
  }
}

/** A unary call as a promise; rejects with the grpc-js error (code, details, metadata). */
function unary(client, method, req, { deadline, metadata } = {}) {
  return new Promise((resolve, reject) => {
    const opts = deadline ? { deadline: new Date(Date.now() + deadline) } : {}
    client[method](req, metadata ?? new grpc.Metadata(), opts, (err, resp) => (err ? reject(err) : resolve(resp)))
  })
}

async function failure(p) {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected the call to fail, it succeeded')
}

const engineCode = (e) => e.metadata?.get('x-cuda-engine-code')?.[0]

/** Packed little-endian f32 rows (an unaligned Buffer slice: copy first). */
function rows(buf, count, dims) {
  const copy = new Float32Array(new Uint8Array(buf).buffer)
  assert.equal(copy.length, count * dims)
  return Array.from({ length: count }, (_, i) => copy.subarray(i * dims, (i + 1) * dims))
}

const cosine = (a, b) => {
  let dot = 0, na = 0, nb = 0
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
  return dot / Math.sqrt(na * nb)
}
const maxAbsDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)

const texts = [
  'hello world',
  'A man is eating food.',
  'The quick brown fox jumps over the lazy dog.',
  'gRPC servers answer many requests on one stream.',
  'Embeddings are vectors.',
  'Una frase en español.',
  '東京は日本の首都です。',
  'short',
  'The weather is lovely today, and the park is full of people walking their dogs.',
  'cuda-engine',
]

const local = await Engine.open({ model: modelDir, device: 'cpu' })
test.after(() => local.close())
const expected = await local.embed(texts)

const server = await startServer(test, { options: { maxEnvelopeBytes: LIMIT } })
const c = clients(server.addr)
test.after(() => c.close())

test('Embed answers packed f32 equal to the in-process embed', async () => {
  const r = await unary(c.engine, 'Embed', { texts, id: 'e1' })
  assert.equal(r.id, 'e1')
  assert.equal(r.model, 'all-MiniLM-L6-v2')
  assert.equal(r.count, texts.length)
  assert.equal(r.dims, 384)
  rows(r.embeddings, r.count, r.dims).forEach((v, i) => {
    const cs = cosine(v, expected[i])
    assert.ok(cs >= 0.99999, `cosine ${cs} for ${texts[i]}`)
  })
  // Options travel: normalize false gives unnormalized vectors.
  const raw = await unary(c.engine, 'Embed', { texts: ['hello world'], normalize: false })
  const v = rows(raw.embeddings, 1, 384)[0]
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0))
  assert.ok(Math.abs(norm - 1) > 1e-3, `normalize: false keeps the norm (${norm})`)
  const e = await failure(unary(c.engine, 'Embed', { texts: ['x'], model: 'other-model' }))
  assert.equal(e.code, grpc.status.NOT_FOUND)
  assert.equal(engineCode(e), 'E_UNKNOWN_MODEL')
  assert.match(e.details, /^E_UNKNOWN_MODEL: /)
})

test('EmbedStream: 1,000 requests on one stream, all answered with their ids, each equal to the unary answer', async () => {
  const unaryRows = rows((await unary(c.engine, 'Embed', { texts })).embeddings, texts.length, 384)
  const n = 1000
  const got = new Map()
  const t0 = performance.now()
  await new Promise((resolve, reject) => {
    const call = c.engine.EmbedStream()
    call.on('data', (m) => {
      assert.ok(!got.has(m.id), `answer ${m.id} came twice`)
      got.set(m.id, m)
    })
    call.on('error', reject)
    call.on('end', resolve)
    for (let i = 0; i < n; i++) {
      // One or two texts a request.
      const idx = i % 3 === 0 ? [i % texts.length, (i + 1) % texts.length] : [i % texts.length]
      call.write({ id: `r${i}`, texts: idx.map((j) => texts[j]) })
    }
    call.end()
  })
  const ms = performance.now() - t0
  assert.equal(got.size, n)
  for (let i = 0; i < n; i++) {
    const m = got.get(`r${i}`)
    assert.ok(m, `r${i} was answered`)
    assert.equal(m.result, 'embedding', `r${i}: ${JSON.stringify(m.error)}`)
    const idx = i % 3 === 0 ? [i % texts.length, (i + 1) % texts.length] : [i % texts.length]
    const vs = rows(m.embedding.embeddings, m.embedding.count, 384)
    idx.forEach((j, k) => assert.ok(maxAbsDiff(vs[k], unaryRows[j]) <= 1e-5, `r${i}[${k}] differs from the unary answer`))
  }
  console.log(`# EmbedStream: ${n} requests (${Math.round(n * 4 / 3)} texts) in ${ms.toFixed(0)} ms`)
})

test('EmbedStream: a failed request is an in-band error; the stream goes on', async () => {
  const got = []
  await new Promise((resolve, reject) => {
    const call = c.engine.EmbedStream()
    call.on('data', (m) => got.push(m))
    call.on('error', reject)
    call.on('end', resolve)
    call.write({ id: 'ok1', texts: ['a'] })
    call.write({ id: 'bad', texts: ['a'], model: 'nope' })
    call.write({ id: 'ok2', texts: ['b'] })
    call.end()
  })
  const by = Object.fromEntries(got.map((m) => [m.id, m]))
  assert.equal(by.ok1.result, 'embedding')
  assert.equal(by.ok2.result, 'embedding')
  assert.equal(by.bad.result, 'error')
  assert.equal(by.bad.error.code, 'E_UNKNOWN_MODEL')
})

test('Submit: echo (JSON and raw bytes) and embedding envelopes answer the job result wire JSON', async () => {
  let r = JSON.parse((await unary(c.engine, 'Submit', { json: JSON.stringify({ id: 'j1', type: 'echo', payload: { a: [1, 2] } }) })).json)
  assert.equal(r.ok, true)
  assert.equal(r.id, 'j1')
  assert.equal(r.type, 'echo')
  assert.deepEqual(r.result, { a: [1, 2] })
  assert.ok(r.timings_ms && typeof r.timings_ms.total === 'number')
  const bytes = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff))
  r = JSON.parse((await unary(c.engine, 'Submit', { raw: Buffer.from(JSON.stringify({ type: 'echo', payload_b64: bytes.toString('base64'), encoding: 'raw' })) })).json)
  assert.ok(Buffer.from(r.result_b64, 'base64').equals(bytes))
  assert.equal(r.encoding, 'raw')
  r = JSON.parse((await unary(c.engine, 'Submit', { json: JSON.stringify({ type: 'embedding', payload: { texts: texts.slice(0, 3) } }) })).json)
  assert.equal(r.type, 'embedding')
  assert.equal(r.result.dims, 384)
  r.result.embeddings.forEach((v, i) => assert.ok(cosine(v, expected[i]) >= 0.99999))

  let e = await failure(unary(c.engine, 'Submit', { json: JSON.stringify({ payload: {} }) }))
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT)
  assert.equal(engineCode(e), 'E_ENVELOPE')
  e = await failure(unary(c.engine, 'Submit', { json: '{"type":"echo",' }))
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT)
  assert.equal(engineCode(e), 'E_BAD_JSON')
  e = await failure(unary(c.engine, 'Submit', {}))
  assert.equal(engineCode(e), 'E_ENVELOPE')
  e = await failure(unary(c.engine, 'Submit', { json: JSON.stringify({ type: 'no_such_type', payload: 1 }), target: 'local' }))
  assert.equal(e.code, grpc.status.UNIMPLEMENTED)
  assert.equal(engineCode(e), 'E_UNKNOWN_TYPE')
  e = await failure(unary(c.engine, 'Submit', { json: '{"type":"echo","payload":1}', target: 'elsewhere' }))
  assert.equal(engineCode(e), 'E_INVALID_ARG')
})

test('a body that is not protobuf is INVALID_ARGUMENT with E_DECODE (tonic answers it before any handler; recoded)', async () => {
  const e = await failure(new Promise((resolve, reject) => {
    c.engine.makeUnaryRequest('/cuda_engine.v1.Engine/Embed', (b) => b, (b) => b, Buffer.from([0x0a, 0xff, 0xff, 0xff]), (err, r) => (err ? reject(err) : resolve(r)))
  }))
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.details)
  assert.equal(engineCode(e), 'E_DECODE')
  const u = await failure(new Promise((resolve, reject) => {
    c.engine.makeUnaryRequest('/cuda_engine.v1.Engine/NoSuchMethod', (b) => b, (b) => b, Buffer.alloc(0), (err, r) => (err ? reject(err) : resolve(r)))
  }))
  assert.equal(u.code, grpc.status.UNIMPLEMENTED)
})

test('Health answers the health document; grpc.health.v1 says SERVING', async () => {
  const h = JSON.parse((await unary(c.engine, 'Health', {})).json)
  assert.equal(h.status, 'ok')
  assert.equal(h.model.name, 'all-MiniLM-L6-v2')
  assert.equal(h.model.dims, 384)
  for (const service of ['', 'cuda_engine.v1.Engine', 'inference.GRPCInferenceService']) {
    assert.equal((await unary(c.health, 'Check', { service })).status, 'SERVING', service)
  }
  const e = await failure(unary(c.health, 'Check', { service: 'no.such.Service' }))
  assert.equal(e.code, grpc.status.NOT_FOUND)
})

test('ModelInfer: BYTES text in, sentence_embedding out; raw contents answered raw, typed answered typed', async () => {
  assert.equal((await unary(c.oip, 'ServerLive', {})).live, true)
  assert.equal((await unary(c.oip, 'ServerReady', {})).ready, true)
  assert.equal((await unary(c.oip, 'ModelReady', { name: 'all-MiniLM-L6-v2' })).ready, true)
  assert.equal((await unary(c.oip, 'ModelReady', { name: 'other' })).ready, false)
  const meta = await unary(c.oip, 'ModelMetadata', { name: 'all-MiniLM-L6-v2' })
  assert.deepEqual(meta.inputs.map((t) => t.name), ['input_ids', 'attention_mask', 'token_type_ids', 'text'])
  const bytesRaw = Buffer.concat(texts.flatMap((s) => { const b = Buffer.from(s); const l = Buffer.alloc(4); l.writeUInt32LE(b.length); return [l, b] }))
  const req = {
    model_name: 'all-MiniLM-L6-v2', id: 'i1',
    inputs: [{ name: 'text', datatype: 'BYTES', shape: [texts.length] }],
    outputs: [{ name: 'sentence_embedding' }],
    raw_input_contents: [bytesRaw],
  }
  const raw = await unary(c.oip, 'ModelInfer', req)
  assert.equal(raw.id, 'i1')
  assert.equal(raw.outputs[0].name, 'sentence_embedding')
  assert.deepEqual(raw.outputs[0].shape.map(Number), [texts.length, 384])
  assert.equal(raw.raw_output_contents.length, 1)
  rows(raw.raw_output_contents[0], texts.length, 384).forEach((v, i) => assert.ok(cosine(v, expected[i]) >= 0.99999))
  const typed = await unary(c.oip, 'ModelInfer', {
    ...req, raw_input_contents: [],
    inputs: [{ name: 'text', datatype: 'BYTES', shape: [texts.length], contents: { bytes_contents: texts.map((s) => Buffer.from(s)) } }],
  })
  assert.equal(typed.raw_output_contents.length, 0)
  const flat = typed.outputs[0].contents.fp32_contents
  assert.equal(flat.length, texts.length * 384)
  texts.forEach((_, i) => assert.ok(cosine(flat.slice(i * 384, (i + 1) * 384), expected[i]) >= 0.99999))
  const e = await failure(unary(c.oip, 'ModelInfer', { ...req, inputs: [{ name: 'nope', datatype: 'BYTES', shape: [texts.length] }] }))
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT)
  assert.equal(engineCode(e), 'E_INVALID_ARG')
})

test('ModelStreamInfer: answers as they finish; a bad request is an in-band error_message, the stream stays open', async () => {
  const got = []
  await new Promise((resolve, reject) => {
    const call = c.oip.ModelStreamInfer()
    call.on('data', (m) => got.push(m))
    call.on('error', reject)
    call.on('end', resolve)
    const one = (id, name = 'text') => ({
      id, inputs: [{ name, datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from(texts[Number(id.slice(1)) % texts.length])] } }],
    })
    call.write(one('s0'))
    call.write(one('s1', 'bogus'))
    call.write(one('s2'))
    call.end()
  })
  assert.equal(got.length, 3)
  const by = Object.fromEntries(got.map((m) => [m.infer_response.id, m]))
  assert.equal(by.s0.error_message, '')
  assert.ok(cosine(by.s0.infer_response.outputs.find((o) => o.name === 'sentence_embedding').contents.fp32_contents, expected[0]) >= 0.99999)
  assert.match(by.s1.error_message, /^E_INVALID_ARG: /)
  assert.equal(by.s2.error_message, '')
})

test('a 64 MiB payload round trip (Submit echo of raw bytes); a message over the limit is RESOURCE_EXHAUSTED and the server keeps serving', async () => {
  // The engine has no identity model for ModelInfer, so the 64 MiB round
  // trip goes through Submit's echo (base64 both ways, ~85 MiB messages).
  const big = Buffer.alloc(64 * MiB)
  for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff
  big[big.length - 1] = 0xab
  let t0 = performance.now()
  const r = JSON.parse((await unary(c.engine, 'Submit', { raw: Buffer.from(JSON.stringify({ type: 'echo', payload_b64: big.toString('base64'), encoding: 'raw' })) })).json)
  const roundTrip = performance.now() - t0
  assert.ok(Buffer.from(r.result_b64, 'base64').equals(big), '64 MiB came back unchanged')
  console.log(`# 64 MiB Submit echo round trip: ${roundTrip.toFixed(0)} ms`)

  const over = Buffer.alloc(LIMIT + MiB, 0x61)
  let e = await failure(unary(c.engine, 'Submit', { raw: over }))
  assert.equal(e.code, grpc.status.RESOURCE_EXHAUSTED, e.details)
  assert.equal(engineCode(e), 'E_TOO_LARGE')
  e = await failure(unary(c.oip, 'ModelInfer', {
    inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, over.length / 8] }], raw_input_contents: [over],
  }))
  assert.equal(e.code, grpc.status.RESOURCE_EXHAUSTED, e.details)
  assert.equal(engineCode(e), 'E_TOO_LARGE')
  t0 = performance.now()
  const ok = JSON.parse((await unary(c.engine, 'Submit', { json: '{"type":"echo","payload":"still here"}' })).json)
  assert.equal(ok.result, 'still here')
})

test('VectorSearch / VectorSearchStream over an index loaded with --index NAME=PATH: the same hits as the in-process index', async (t) => {
  const { VectorIndex } = addon
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpc-index-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const index = await VectorIndex.create({ dims: 384, metric: 'cosine', dtype: 'fp32', device: 'cpu' })
  await index.upsert(texts.map((_, i) => `doc${i}`), expected, { namespaces: texts.map((_, i) => (i % 2 ? 'odd' : 'even')) })
  const file = path.join(dir, 'docs.idx')
  await index.save(file)
  const s = await startServer(t, { args: ['--index', `docs=${file}`] })
  const cl = clients(s.addr)
  t.after(() => cl.close())
  const queries = Buffer.from(new Float32Array([...expected[2], ...expected[5]]).buffer)
  const want = await index.search(new Float32Array([...expected[2], ...expected[5]]), { k: 3 })
  const r = await unary(cl.engine, 'VectorSearch', { index: 'docs', k: 3, vectors: queries, id: 'q1' })
  assert.equal(r.id, 'q1')
  assert.equal(r.results.length, 2)
  r.results.forEach((h, i) => {
    assert.deepEqual(h.ids, want[i].ids)
    h.scores.forEach((x, j) => assert.ok(Math.abs(x - want[i].scores[j]) < 1e-5))
  })
  assert.equal(r.results[0].ids[0], 'doc2')
  // Texts are embedded on the server; a namespace filters.
  const byText = await unary(cl.engine, 'VectorSearch', { index: 'docs', k: 2, texts: [texts[3]], namespace: 'odd' })
  assert.equal(byText.results[0].ids[0], 'doc3')
  assert.ok(byText.results[0].ids.every((id) => Number(id.slice(3)) % 2 === 1))
  let e = await failure(unary(cl.engine, 'VectorSearch', { index: 'nope', vectors: queries }))
  assert.equal(engineCode(e), 'E_INVALID_ARG')
  e = await failure(unary(cl.engine, 'VectorSearch', { index: 'docs', vectors: queries, texts: ['x'] }))
  assert.equal(engineCode(e), 'E_INVALID_ARG')
  e = await failure(unary(cl.engine, 'VectorSearch', { index: 'docs', vectors: Buffer.alloc(6) }))
  assert.equal(engineCode(e), 'E_INVALID_ARG')
  const got = []
  await new Promise((resolve, reject) => {
    const call = cl.engine.VectorSearchStream()
    call.on('data', (m) => got.push(m))
    call.on('error', reject)
    call.on('end', resolve)
    for (let i = 0; i < 20; i++) call.write({ id: `v${i}`, index: 'docs', k: 1, texts: [texts[i % texts.length]] })
    call.write({ id: 'bad', index: 'missing', k: 1, texts: ['x'] })
    call.end()
  })
  assert.equal(got.length, 21)
  for (const m of got) {
    if (m.id === 'bad') {
      assert.equal(m.result, 'error')
      assert.equal(m.error.code, 'E_INVALID_ARG')
    } else {
      assert.equal(m.result, 'hits', JSON.stringify(m.error))
      assert.equal(m.hits.results[0].ids[0], `doc${Number(m.id.slice(1)) % texts.length}`)
    }
  }
})

test('gzip: compressed requests are accepted (answers are not compressed unless --grpc-gzip-responses)', async () => {
  const gz = clients(server.addr, grpc.credentials.createInsecure(), { 'grpc.default_compression_algorithm': 2 })
  try {
    const payload = 'abc'.repeat(100_000)
    const r = JSON.parse((await unary(gz.engine, 'Submit', { json: JSON.stringify({ type: 'echo', payload }) })).json)
    assert.equal(r.result, payload)
    const em = await unary(gz.engine, 'Embed', { texts: texts.slice(0, 2) })
    rows(em.embeddings, 2, 384).forEach((v, i) => assert.ok(cosine(v, expected[i]) >= 0.99999))
  } finally {
    gz.close()
  }
})

const manyTexts = Array.from({ length: 3000 }, (_, i) => `sentence number ${i}: ${texts[i % texts.length]} ${'more words '.repeat(i % 7)}`)

async function inFlight() {
  return JSON.parse((await unary(c.engine, 'Health', {})).json).queue.in_flight
}

test('deadline: a call past its grpc-timeout is DEADLINE_EXCEEDED (E_TIMEOUT) and its engine job is cancelled', async () => {
  const t0 = performance.now()
  const e = await failure(unary(c.engine, 'Embed', { texts: manyTexts }, { deadline: 100 }))
  assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED)
  // The server answers just before the client's own timer; when its answer
  // wins the race it carries the engine's code.
  const code = engineCode(e)
  assert.ok(code === undefined || code === 'E_TIMEOUT', String(code))
  assert.ok(performance.now() - t0 < 2000)
  // A grpc-timeout header written by hand (no client-side timer): the
  // server's own answer.
  const md = new grpc.Metadata()
  md.set('grpc-timeout', '50m')
  const e2 = await failure(unary(c.engine, 'Embed', { texts: manyTexts }, { metadata: md }))
  assert.equal(e2.code, grpc.status.DEADLINE_EXCEEDED, e2.details)
  assert.equal(engineCode(e2), 'E_TIMEOUT')
  // Nothing of those calls stays in flight.
  for (let i = 0; i < 50 && (await inFlight()) > 0; i++) await new Promise((r) => setTimeout(r, 20))
  assert.equal(await inFlight(), 0, 'nothing is left in flight')
})

test('a client cancel cancels the engine job', async () => {
  const call = c.engine.Embed({ texts: manyTexts }, (err) => { call.err = err })
  await new Promise((r) => setTimeout(r, 150))
  assert.ok((await inFlight()) >= 1, 'the embedding is running')
  const t0 = performance.now()
  call.cancel()
  let n
  for (let i = 0; i < 100 && (n = await inFlight()) > 0; i++) await new Promise((r) => setTimeout(r, 10))
  assert.equal(n, 0, 'the cancelled call left the engine')
  console.log(`# cancel reached the engine in ${(performance.now() - t0).toFixed(0)} ms`)
})

test('SIGTERM: health goes NOT_SERVING, the call in flight completes, then exit 0', async (t) => {
  const s = await startServer(t, { args: ['--drain-ms', '20000'] })
  const cl = clients(s.addr)
  t.after(() => cl.close())
  await unary(cl.engine, 'Embed', { texts: ['warm up'] })
  const statuses = []
  const watch = cl.health.Watch({ service: '' })
  watch.on('data', (m) => statuses.push(m.status))
  watch.on('error', () => {})
  const running = unary(cl.engine, 'Embed', { texts: manyTexts.slice(0, 400) })
  await new Promise((r) => setTimeout(r, 200))
  const t0 = performance.now()
  s.proc.kill('SIGTERM')
  for (let i = 0; i < 200 && !statuses.includes('NOT_SERVING'); i++) await new Promise((r) => setTimeout(r, 10))
  assert.deepEqual(statuses.slice(0, 2), ['SERVING', 'NOT_SERVING'])
  watch.cancel()
  const r = await running
  assert.equal(r.count, 400, 'the call in flight completed')
  const { code, signal } = await s.exited
  assert.equal(signal, null)
  assert.equal(code, 0, s.stderr())
  assert.match(s.stderr(), /draining/)
  console.log(`# SIGTERM to exit 0: ${(performance.now() - t0).toFixed(0)} ms (the call in flight finished first)`)
})

test('TLS: --tls-cert/--tls-key with a self-signed certificate (openssl); plaintext clients are refused', async (t) => {
  const openssl = spawnSync('which', ['openssl'], { encoding: 'utf8' })
  assert.equal(openssl.status, 0, 'openssl is needed for the TLS test')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpc-tls-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const cert = path.join(dir, 'cert.pem')
  const key = path.join(dir, 'key.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-addext', 'basicConstraints=critical,CA:FALSE'], { stdio: 'ignore' })
  const s = await startServer(t, { args: ['--tls-cert', cert, '--tls-key', key] })
  const secure = clients(`localhost:${s.port}`, grpc.credentials.createSsl(fs.readFileSync(cert)))
  t.after(() => secure.close())
  assert.equal((await unary(secure.health, 'Check', { service: '' })).status, 'SERVING')
  const r = await unary(secure.engine, 'Embed', { texts: texts.slice(0, 1) })
  assert.ok(cosine(rows(r.embeddings, 1, 384)[0], expected[0]) >= 0.99999)
  const plain = clients(`127.0.0.1:${s.port}`)
  t.after(() => plain.close())
  const e = await failure(unary(plain.health, 'Check', { service: '' }, { deadline: 3000 }))
  assert.ok([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(e.code), e.details)
  // The shim over TLS.
  const shim = spawnSync(shimBin, ['--target', `grpcs://localhost:${s.port}`, '--tls-ca', cert], {
    input: '{"type":"echo","payload":{"tls":true}}', encoding: 'utf8',
  })
  assert.equal(shim.status, 0, shim.stderr)
  assert.deepEqual(JSON.parse(shim.stdout), { ok: true, encoding: 'json', result: { tls: true } })
})

test('tritonclient[grpc] (Python) against the server: tests/grpc_tritonclient.py', async (t) => {
  let python
  try {
    python = execFileSync('bash', [path.join(root, 'scripts/python-grpc-env.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 }).trim()
  } catch (e) {
    console.log(`SKIPPED: tritonclient interop: the Python venv could not be set up (${String(e.message).split('\n')[0]})`)
    t.skip('no Python venv')
    return
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpc-triton-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const ref = path.join(dir, 'expected.json')
  const idsReq = await local.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], data: texts.slice(0, 2) }], outputs: [{ name: 'input_ids' }, { name: 'attention_mask' }, { name: 'sentence_embedding' }] })
  const out = (n) => idsReq.outputs.find((o) => o.name === n)
  fs.writeFileSync(ref, JSON.stringify({
    texts, embeddings: expected.map((v) => Array.from(v)),
    ids: { shape: out('input_ids').shape, input_ids: Array.from(out('input_ids').data, Number), attention_mask: Array.from(out('attention_mask').data, Number), sentence_embedding: Array.from(out('sentence_embedding').data) },
  }))
  const r = spawnSync(python, [path.join(root, 'tests/grpc_tritonclient.py'), `127.0.0.1:${server.port}`, ref], { encoding: 'utf8', timeout: 300_000 })
  process.stdout.write(r.stdout.split('\n').filter(Boolean).map((l) => `# ${l}\n`).join(''))
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`)
  assert.match(r.stdout, /tritonclient: all checks passed/)
})

test('cuda-grpc-shim as the worker binary: __test__/worker.test.mjs passes through it against the server', () => {
  const env = { ...process.env, CUDA_WORKER_BIN: shimBin, CUDA_GRPC_TARGET: `grpc://${server.addr}` }
  delete env.CUDA_WORKER_PATH
  delete env.NODE_TEST_CONTEXT // a nested `node --test` reports as a top-level run
  const r = spawnSync(process.execPath, ['--test', path.join(root, '__test__/worker.test.mjs')], { cwd: root, env, encoding: 'utf8', timeout: 300_000 })
  const summary = r.stdout.split('\n').filter((l) => /^# (tests|pass|fail)/.test(l))
  process.stdout.write(summary.map((l) => `# worker.test.mjs via the shim: ${l.slice(2)}\n`).join(''))
  assert.equal(r.status, 0, r.stdout + r.stderr)
  assert.match(r.stdout, /^# fail 0$/m)
})

test("cuda-grpc-shim as the isolated process (isolation: 'process'): embed goes through Embed on the server", async (t) => {
  const saved = { path: process.env.CUDA_WORKER_PATH, target: process.env.CUDA_GRPC_TARGET }
  process.env.CUDA_WORKER_PATH = shimBin
  process.env.CUDA_GRPC_TARGET = `grpc://${server.addr}`
  t.after(() => {
    for (const [k, v] of [['CUDA_WORKER_PATH', saved.path], ['CUDA_GRPC_TARGET', saved.target]]) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })
  const iso = await Engine.open({ isolation: 'process', device: 'cpu', model: modelDir })
  t.after(() => iso.close())
  const vs = await iso.embed(texts)
  vs.forEach((v, i) => assert.ok(cosine(v, expected[i]) >= 0.99999))
  const h = await iso.health()
  assert.equal(h.isolation.path, shimBin)
  const inf = await iso.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [1], data: [texts[1]] }], outputs: [{ name: 'sentence_embedding' }] })
  assert.ok(cosine(inf.outputs[0].data, expected[1]) >= 0.99999)
})

test('the shim, unreachable server: E_REMOTE replies, exit 0', () => {
  const r = spawnSync(shimBin, ['--target', 'grpc://127.0.0.1:1'], { input: '{"type":"echo","payload":1}', encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  const reply = JSON.parse(r.stdout)
  assert.equal(reply.ok, false)
  assert.equal(reply.error.code, 'E_REMOTE')
  assert.match(reply.error.message, /grpc:\/\/127\.0\.0\.1:1/)
  const usage = spawnSync(shimBin, [], { input: '', encoding: 'utf8', env: { ...process.env, CUDA_GRPC_TARGET: '' } })
  assert.equal(usage.status, 64)
  assert.match(usage.stderr, /CUDA_GRPC_TARGET/)
})
