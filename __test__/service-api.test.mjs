// The service's user-facing APIs (docs/service.md), each against the real
// service in a child process and checked against the addon in this process:
// OpenAI embeddings through the official `openai` client, KServe v2 REST,
// Prometheus metrics through a real parser, NDJSON streaming, and a SIGTERM
// drain with a 2-second request in flight.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import OpenAI from 'openai'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'

import { addon, require } from './helpers.mjs'
import { startService, until, request, sleep, refusesConnections } from './service-helpers.mjs'

const MODEL = 'all-MiniLM-L6-v2'
const TEXTS = ['hello world', 'A man is eating food.', 'The new movie is awesome', 'Ünïcödé text, with punctuation!']

const maxDiff = (a, b) => {
  assert.equal(a.length, b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}
const json = { 'content-type': 'application/json' }
const postJson = (url, p, body, headers = {}) => fetch(`${url}${p}`, { method: 'POST', headers: { ...json, ...headers }, body: JSON.stringify(body) })

/** What the engine tokenized for each text (the usage the service must report). */
async function tokenCounts(texts) {
  const r = await addon.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [texts.length], data: texts }], outputs: [{ name: 'attention_mask' }, { name: 'input_ids' }] })
  const mask = r.outputs.find((o) => o.name === 'attention_mask')
  const ids = r.outputs.find((o) => o.name === 'input_ids')
  const seq = mask.shape[1]
  return texts.map((_, b) => {
    const row = Array.from(mask.data.subarray(b * seq, (b + 1) * seq))
    const n = row.filter((v) => v === 1n).length
    return { n, ids: Array.from(ids.data.subarray(b * seq, b * seq + n), Number) }
  })
}

test('OpenAI embeddings: the official client, float and base64, dimensions, token ids, usage, errors', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const client = new OpenAI({ baseURL: `${svc.url}/v1`, apiKey: 'unused', maxRetries: 0 })
  const ref = await addon.embed(TEXTS)
  const tokens = await tokenCounts(TEXTS)
  const total = tokens.reduce((s, x) => s + x.n, 0)

  // Without encoding_format the client asks for base64 and decodes it to numbers;
  // with 'base64' it hands the string over as sent (little-endian float32).
  const f32 = (e) => (typeof e === 'string' ? ((b) => new Float32Array(b.buffer, b.byteOffset, b.length / 4))(Buffer.from(e, 'base64')) : Float32Array.from(e))
  for (const encoding_format of [undefined, 'base64', 'float']) {
    const r = await client.embeddings.create({ model: MODEL, input: TEXTS, ...(encoding_format ? { encoding_format } : {}) })
    assert.equal(r.object, 'list')
    assert.equal(r.model, MODEL)
    assert.deepEqual(r.usage, { prompt_tokens: total, total_tokens: total })
    assert.deepEqual(r.data.map((d) => [d.object, d.index]), TEXTS.map((_, i) => ['embedding', i]))
    r.data.forEach((d, i) => {
      assert.equal(typeof d.embedding === 'string', encoding_format === 'base64')
      assert.equal(maxDiff(f32(d.embedding), ref[i]), 0, `${encoding_format} #${i}`)
    })
  }

  // One string; a hub-style model id naming the served model.
  let r = await client.embeddings.create({ model: `sentence-transformers/${MODEL}`, input: TEXTS[1], encoding_format: 'float' })
  assert.equal(r.data.length, 1)
  assert.equal(maxDiff(Float32Array.from(r.data[0].embedding), ref[1]), 0)

  // dimensions: the first N values, re-normalized.
  r = await client.embeddings.create({ model: MODEL, input: TEXTS, dimensions: 64, encoding_format: 'float' })
  r.data.forEach((d, i) => {
    assert.equal(d.embedding.length, 64)
    const head = ref[i].subarray(0, 64)
    const norm = Math.hypot(...head)
    assert.ok(maxDiff(d.embedding, Array.from(head, (v) => v / norm)) < 1e-6)
    assert.ok(Math.abs(Math.hypot(...d.embedding) - 1) < 1e-6)
  })

  // Token ids (as the model's tokenizer gives them) equal the texts.
  r = await client.embeddings.create({ model: MODEL, input: tokens.map((x) => x.ids), encoding_format: 'float' })
  assert.deepEqual(r.usage, { prompt_tokens: total, total_tokens: total })
  r.data.forEach((d, i) => assert.ok(maxDiff(d.embedding, ref[i]) < 1e-6, `ids #${i}`))
  r = await client.embeddings.create({ model: MODEL, input: tokens[0].ids, encoding_format: 'float' })
  assert.equal(r.data.length, 1)

  // Errors: OpenAI's shape, the engine's code, the status from the table.
  const cases = [
    [{ model: 'text-embedding-3-small', input: 'x' }, 404, 'E_UNKNOWN_MODEL', 'model'],
    [{ model: MODEL, input: 'x', dimensions: 385 }, 400, 'E_INVALID_ARG', 'dimensions'],
    [{ model: MODEL, input: 'x', dimensions: 0 }, 400, 'E_INVALID_ARG', 'dimensions'],
    [{ model: MODEL, input: 'x', encoding_format: 'int8' }, 400, 'E_INVALID_ARG', 'encoding_format'],
    [{ model: MODEL, input: [] }, 400, 'E_INVALID_ARG', 'input'],
    [{ model: MODEL, input: ['a', 1] }, 400, 'E_INVALID_ARG', 'input'],
    [{ model: MODEL, input: [[101, -1]] }, 400, 'E_INVALID_ARG', 'input'],
    [{ model: MODEL, input: [[101, 999999]] }, 400, 'E_INVALID_ARG', null],
    [{ model: MODEL, input: 'x', dimensionz: 3 }, 400, 'E_INVALID_ARG', 'dimensionz'],
    [{ model: '', input: 'x' }, 400, 'E_INVALID_ARG', 'model'],
    [{ model: 7, input: 'x' }, 400, 'E_INVALID_ARG', 'model'],
  ]
  for (const [body, status, code, param] of cases) {
    const err = await client.embeddings.create(body).then(
      () => assert.fail(`expected ${code} for ${JSON.stringify(body)}`),
      (e) => e,
    )
    assert.equal(err.status, status, JSON.stringify(body))
    assert.equal(err.code, code, JSON.stringify(body))
    assert.equal(err.type, status === 404 ? 'not_found_error' : 'invalid_request_error')
    assert.equal(err.param, param, JSON.stringify(body))
    assert.match(err.message, /\S/)
  }
  // Not JSON at all, and the wrong content type.
  let res = await fetch(`${svc.url}/v1/embeddings`, { method: 'POST', headers: json, body: '{"model":' })
  assert.equal(res.status, 400)
  assert.equal((await res.json()).error.code, 'E_BAD_JSON')
  res = await fetch(`${svc.url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' })
  assert.equal(res.status, 415)
  assert.equal((await res.json()).error.code, 'E_UNSUPPORTED_MEDIA_TYPE')
  // Without `model`: the served model (as text-embeddings-inference allows).
  const plain = await (await postJson(svc.url, '/v1/embeddings', { input: TEXTS[0], encoding_format: 'float' })).json()
  assert.equal(plain.model, MODEL)
  assert.equal(maxDiff(Float32Array.from(plain.data[0].embedding), ref[0]), 0)
  // GET /v1/models lists the served model.
  const models = await client.models.list()
  assert.deepEqual(models.data.map((m) => m.id), [MODEL])
})

test('NDJSON streaming: embeddings in order, progress per chunk, usage last; equal to the plain reply', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const input = Array.from({ length: 600 }, (_, i) => `sentence number ${i} about ${['cats', 'trains', 'rain'][i % 3]}`)
  const plain = await (await postJson(svc.url, '/v1/embeddings', { model: MODEL, input, encoding_format: 'base64' })).json()
  for (const [p, headers] of [
    ['/v1/embeddings?stream=1', {}],
    ['/v1/embeddings', { accept: 'application/x-ndjson' }],
  ]) {
    const res = await postJson(svc.url, p, { model: MODEL, input, encoding_format: 'base64' }, headers)
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type'), /^application\/x-ndjson/)
    const lines = (await res.text()).trimEnd().split('\n').map((l) => JSON.parse(l))
    const embeddings = lines.filter((l) => l.object === 'embedding')
    const progress = lines.filter((l) => l.object === 'progress')
    assert.deepEqual(embeddings.map((e) => e.index), input.map((_, i) => i))
    embeddings.forEach((e, i) => assert.equal(e.embedding, plain.data[i].embedding, `#${i}`))
    assert.deepEqual(progress, [256, 512, 600].map((done) => ({ object: 'progress', done, total: 600 })))
    assert.deepEqual(lines.at(-1), { object: 'usage', model: MODEL, usage: plain.usage })
    // Each progress line follows the embeddings it counts.
    const at = lines.findIndex((l) => l.object === 'progress')
    assert.equal(lines.slice(0, at).filter((l) => l.object === 'embedding').length, 256)
  }
  // A request that fails before the stream starts is a plain error reply.
  const res = await postJson(svc.url, '/v1/embeddings?stream=1', { model: 'nope', input })
  assert.equal(res.status, 404)
  assert.equal((await res.json()).error.code, 'E_UNKNOWN_MODEL')
})

test('KServe v2 REST: metadata, probes, infer equal to infer(), errors with codes', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const get = async (p) => {
    const r = await fetch(`${svc.url}${p}`)
    return { status: r.status, body: await r.json() }
  }
  assert.deepEqual(await get('/v2'), { status: 200, body: { name: 'cuda-engine', version: require('../package.json').version, extensions: [] } })
  assert.deepEqual(await get('/v2/health/live'), { status: 200, body: { live: true } })
  assert.deepEqual(await get('/v2/health/ready'), { status: 200, body: { ready: true } })
  const [meta] = await addon.models()
  assert.deepEqual(await get(`/v2/models/${MODEL}`), { status: 200, body: meta })
  assert.deepEqual(await get(`/v2/models/${MODEL}/versions/1`), { status: 200, body: meta })
  assert.deepEqual(await get(`/v2/models/${MODEL}/ready`), { status: 200, body: { name: MODEL, ready: true } })
  for (const p of ['/v2/models/other', '/v2/models/other/ready', `/v2/models/${MODEL}/versions/2`]) {
    const r = await get(p)
    assert.equal(r.status, 404, p)
    assert.equal(r.body.code, 'E_UNKNOWN_MODEL')
    assert.equal(typeof r.body.error, 'string')
  }

  const plain = (r) => ({ ...r, outputs: r.outputs.map((o) => ({ ...o, data: Array.from(o.data, (v) => (typeof v === 'bigint' ? Number(v) : v)) })) })
  const requests = [
    { id: 'text-1', inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], data: TEXTS.slice(0, 2) }] },
    { inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], data: TEXTS.slice(2) }], outputs: [{ name: 'sentence_embedding' }, { name: 'input_ids' }], parameters: { normalize: false } },
    { id: 'ids', inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 4], data: [[101, 7592, 2088, 102]] }], outputs: [{ name: 'last_hidden_state' }, { name: 'sentence_embedding' }] },
  ]
  for (const body of requests) {
    const res = await postJson(svc.url, `/v2/models/${MODEL}/infer`, body)
    const got = await res.json()
    assert.equal(res.status, 200, JSON.stringify(got))
    const want = plain(await addon.infer({ ...body, model_name: MODEL }))
    if (body.id === undefined) {
      assert.match(got.id, /\S/)
      want.id = got.id
    }
    assert.equal(got.outputs.length, want.outputs.length)
    got.outputs.forEach((o, i) => {
      const w = want.outputs[i]
      assert.deepEqual([o.name, o.datatype, o.shape], [w.name, w.datatype, w.shape])
      assert.equal(maxDiff(o.data, w.data), 0, o.name)
    })
    assert.deepEqual([got.model_name, got.id], [MODEL, want.id])
  }
  // The versioned path, and errors.
  let res = await postJson(svc.url, `/v2/models/${MODEL}/versions/1/infer`, requests[0])
  assert.equal(res.status, 200)
  for (const [p, body, status, code] of [
    [`/v2/models/${MODEL}/infer`, { inputs: [{ name: 'pixels', datatype: 'FP32', shape: [1], data: [1] }] }, 400, 'E_INVALID_ARG'],
    [`/v2/models/${MODEL}/infer`, { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 2], data: [101] }] }, 400, 'E_INVALID_ARG'],
    [`/v2/models/${MODEL}/infer`, { model_name: 'x', inputs: [] }, 400, 'E_INVALID_ARG'],
    [`/v2/models/${MODEL}/infer`, [1, 2], 400, 'E_INVALID_ARG'],
    ['/v2/models/other/infer', requests[0], 404, 'E_UNKNOWN_MODEL'],
  ]) {
    res = await postJson(svc.url, p, body)
    const j = await res.json()
    assert.equal(res.status, status, `${p} ${JSON.stringify(body)}: ${JSON.stringify(j)}`)
    assert.equal(j.code, code)
    assert.equal(typeof j.error, 'string')
  }
  res = await fetch(`${svc.url}/v2/models/${MODEL}/infer`)
  assert.equal(res.status, 405)
  assert.equal(res.headers.get('allow'), 'POST')
})

test('GET /metrics parses as Prometheus text and counts exactly the calls made', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const N = 7
  const K = 3
  for (let i = 0; i < N; i++) assert.equal((await postJson(svc.url, '/v1/embeddings', { model: MODEL, input: [`text ${i}`, 'more'] })).status, 200)
  for (let i = 0; i < K; i++) assert.equal((await postJson(svc.url, `/v2/models/${MODEL}/infer`, { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], data: [999999] }] })).status, 400)
  const res = await fetch(`${svc.url}/metrics`)
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const text = await res.text()
  const families = new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f]))
  const value = (name, labels) => {
    const f = families.get(name)
    assert.ok(f, `family ${name} is exposed`)
    const m = f.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v))
    return m === undefined ? 0 : Number(m.value ?? m.count)
  }
  // The service's own counters (the scrape itself is in flight, not counted).
  assert.equal(value('cuda_service_http_requests_total', { route: '/v1/embeddings', status: '200' }), N)
  assert.equal(value('cuda_service_http_requests_total', { route: '/v2/models/{name}/infer', status: '400' }), K)
  // The parser keeps no labels of a labelled histogram (it merges its series), so
  // the family's type comes from it and a series' count from its own line.
  assert.equal(families.get('cuda_service_http_request_duration_seconds').type, 'HISTOGRAM')
  const count = (name, labels) => Number(new RegExp(`^${name}_count\\{${labels}\\} (\\S+)$`, 'm').exec(text)?.[1])
  assert.equal(count('cuda_service_http_request_duration_seconds', 'route="/v1/embeddings"'), N)
  assert.equal(value('cuda_service_http_in_flight', {}), 1)
  // The engine's: one infer per request, the K failures by code.
  assert.equal(value('cuda_engine_requests_total', { type: 'infer' }), N + K)
  assert.equal(value('cuda_engine_errors_total', { type: 'infer', code: 'E_INVALID_ARG' }), K)
  assert.equal(families.get('cuda_engine_request_duration_seconds').type, 'HISTOGRAM')
  const { backend } = await (await fetch(`${svc.url}/api/v1/health`)).json()
  assert.equal(count('cuda_engine_request_duration_seconds', `type="infer",backend="${backend}"`), N + K)
})

test('SIGTERM with a 2-second request in flight: it completes with 200, new connections are refused, exit within the deadline', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-service-drain-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  // A one-shot worker whose job takes 2 s.
  const slow = path.join(dir, 'slow-worker.sh')
  fs.writeFileSync(slow, '#!/bin/sh\ncat >/dev/null\nsleep 2\necho \'{"ok":true,"encoding":"json","result":{"slept":2}}\'\n', { mode: 0o755 })
  const svc = await startService(['--worker', slow, '--shutdown-timeout', '6000'])
  t.after(svc.stop)
  const t0 = Date.now()
  const inflight = postJson(svc.url, '/api/v1/submit', { type: 'slow_job', payload: {} })
  await sleep(300)
  const exited = new Promise((r) => svc.child.once('exit', (code) => r({ code, ms: Date.now() - t0 })))
  svc.child.kill('SIGTERM')
  assert.ok(await refusesConnections(svc), 'new connections are refused after SIGTERM')
  const res = await inflight
  assert.equal(res.status, 200)
  assert.deepEqual((await res.json()).result, { slept: 2 })
  assert.ok(Date.now() - t0 >= 2000)
  const { code, ms } = await exited
  assert.equal(code, 0)
  assert.ok(ms < 6000, `exited ${ms} ms after the request began (deadline 6000 ms after SIGTERM)`)

  // A deadline shorter than the request: the process still exits within it.
  const short = await startService(['--worker', slow, '--shutdown-timeout', '500'])
  t.after(short.stop)
  const cut = postJson(short.url, '/api/v1/submit', { type: 'slow_job', payload: {} }).catch((e) => e)
  await sleep(300)
  const t1 = Date.now()
  const gone = new Promise((r) => short.child.once('exit', (c) => r({ code: c, ms: Date.now() - t1 })))
  short.child.kill('SIGTERM')
  const end = await gone
  assert.ok(end.ms < 1500, `exited ${end.ms} ms after SIGTERM with a 500 ms deadline`)
  await cut
  await until(() => short.child.exitCode !== null, 1000, 'exit')
})

test('/readyz: ready while serving; probes need no token only for liveness', async (t) => {
  const svc = await startService([], { CUDA_SERVICE_TOKEN: 'tok' })
  t.after(svc.stop)
  for (const p of ['/livez', '/v2/health/live']) assert.equal((await request(svc, { path: p })).status, 200, p)
  for (const p of ['/readyz', '/v2/health/ready', '/metrics', '/v1/models', '/v2']) {
    assert.equal((await request(svc, { path: p })).status, 401, p)
    assert.equal((await request(svc, { path: p, headers: { authorization: 'Bearer tok' } })).status, 200, p)
  }
  const r = await request(svc, { path: '/v1/models', headers: { authorization: 'Bearer nope' } })
  assert.equal(r.json.error.code, 'E_UNAUTHORIZED')
  assert.equal(r.json.error.type, 'authentication_error')
})
