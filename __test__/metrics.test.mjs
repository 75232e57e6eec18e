// engine.metrics(): exact counters, histograms and gauges (docs/metrics.md),
// in the Prometheus text format (read by a real parser) and as JSON, on the
// CPU with the real model. Needs the model: `bash scripts/fetch-model.sh`.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection, require } from './helpers.mjs'

const parsePrometheus = require('parse-prometheus-text-format')
const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')

const N = 7 // embeds
const M = 5 // echo submits
const K = 3 // failing submits (E_INVALID_ARG from the engine)

/** The families of a text exposition, by name. */
const families = (text) => Object.fromEntries(parsePrometheus(text).map((f) => [f.name, f]))
const labelsMatch = (m, labels) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v)
/** Sum of a counter or gauge family's samples with these labels. */
const value = (fams, name, labels = {}) =>
  (fams[name]?.metrics ?? []).filter((m) => labelsMatch(m, labels)).reduce((s, m) => s + Number(m.value), 0)
/** Every sample line as { name, labels, value } (label values unescaped).
 * parse-prometheus-text-format 1.1 merges the series of a labelled
 * histogram into one, so histograms are read from the lines here. */
const sampleLines = (text) =>
  text.split('\n').filter((l) => l && !l.startsWith('#')).map((line) => {
    const m = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line)
    assert.ok(m, `sample line: ${line}`)
    const labels = {}
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[k] = v.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c))
    }
    return { name: m[1], labels, value: Number(m[3]) }
  })
/** Sum of a histogram's `_count` over the series with these labels. */
const histCount = (text, name, labels = {}) =>
  sampleLines(text).filter((s) => s.name === `${name}_count` && labelsMatch(s, labels)).reduce((t, s) => t + s.value, 0)
/** One histogram series: { count, sum, buckets: { le: count } }. */
const histSeries = (text, name, labels) => {
  const own = sampleLines(text).filter((s) => labelsMatch(s, labels) && Object.keys(s.labels).length - ('le' in s.labels ? 1 : 0) === Object.keys(labels).length)
  // In line order (an object would put integer-like `le` keys first).
  const buckets = own.filter((s) => s.name === `${name}_bucket`).map((s) => [s.labels.le, s.value])
  const one = (suffix) => own.find((s) => s.name === `${name}_${suffix}`)?.value
  return { count: one('count'), sum: one('sum'), buckets, le: Object.fromEntries(buckets) }
}

test('counters are exact, errors carry their codes, histograms count every call', async (t) => {
  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  t.after(() => engine.close())
  for (let i = 0; i < N; i++) await engine.embed(i % 2 ? `text ${i}` : [`a ${i}`, `b ${i}`, `c ${i}`])
  await Promise.all(Array.from({ length: M }, (_, i) => engine.submit({ type: 'echo', payload: { i } })))
  for (let i = 0; i < K; i++) {
    const err = await rejection(engine.submit({ type: 'embedding', payload: { neither: true } }))
    assert.equal(err.code, 'E_INVALID_ARG')
  }
  const bad = await rejection(engine.submit(42))
  assert.equal(bad.code, 'E_ENVELOPE')
  const res = await engine.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [1], data: ['hello'] }] })
  assert.ok(res.outputs.length > 0)

  const text = engine.metrics()
  assert.equal(typeof text, 'string')
  assert.ok(text.endsWith('\n'))
  for (const line of text.split('\n').filter(Boolean)) {
    assert.match(line, /^(# (HELP|TYPE) cuda_engine_\w+ .*|cuda_engine_\w+(\{.*\})? \S+)$/, line)
  }
  const fams = families(text)
  for (const [name, type] of [
    ['cuda_engine_requests_total', 'COUNTER'],
    ['cuda_engine_errors_total', 'COUNTER'],
    ['cuda_engine_request_duration_seconds', 'HISTOGRAM'],
    ['cuda_engine_queue_depth', 'GAUGE'],
    ['cuda_engine_in_flight', 'GAUGE'],
    ['cuda_engine_batch_size', 'HISTOGRAM'],
    ['cuda_engine_batch_tokens', 'HISTOGRAM'],
    ['cuda_engine_model_passes_total', 'COUNTER'],
    ['cuda_engine_gpu_memory_bytes', 'GAUGE'],
    ['cuda_engine_worker_restarts_total', 'COUNTER'],
    ['cuda_engine_worker_in_flight', 'GAUGE'],
    ['cuda_engine_index_vectors', 'GAUGE'],
    ['cuda_engine_index_bytes', 'GAUGE'],
    ['cuda_engine_info', 'GAUGE'],
  ]) {
    assert.equal(fams[name]?.type, type, `${name} is a ${type}`)
    assert.ok(fams[name].help.length > 0, `${name} has HELP`)
  }
  const req = 'cuda_engine_requests_total'
  assert.equal(value(fams, req, { type: 'embed' }), N)
  assert.equal(value(fams, req, { type: 'echo' }), M)
  assert.equal(value(fams, req, { type: 'embedding' }), K)
  assert.equal(value(fams, req, { type: 'unknown' }), 1)
  assert.equal(value(fams, req, { type: 'infer' }), 1)
  assert.equal(value(fams, req), N + M + K + 2)
  const errs = 'cuda_engine_errors_total'
  assert.equal(value(fams, errs, { type: 'embedding', code: 'E_INVALID_ARG' }), K)
  assert.equal(value(fams, errs, { type: 'unknown', code: 'E_ENVELOPE' }), 1)
  assert.equal(value(fams, errs), K + 1, 'only the failed calls')
  const lat = 'cuda_engine_request_duration_seconds'
  assert.equal(histCount(text, lat, { type: 'embed', backend: 'cpu' }), N)
  assert.equal(histCount(text, lat, { type: 'echo', backend: 'cpu' }), M)
  assert.equal(histCount(text, lat, { type: 'embedding', backend: 'cpu' }), K)
  assert.equal(histCount(text, lat), N + M + K + 2)
  for (const l of sampleLines(text).filter((s) => s.name === `${lat}_count`)) {
    const series = histSeries(text, lat, l.labels)
    const les = series.buckets.map(([le]) => le)
    assert.equal(les.at(-1), '+Inf')
    assert.equal(les.length, 19)
    assert.ok(les.slice(0, -1).every((le, i) => i === 0 || Number(le) > Number(les[i - 1])), 'bounds ascend')
    assert.equal(series.le['+Inf'], series.count)
    const counts = series.buckets.map(([, c]) => c)
    assert.ok(counts.every((c, i) => i === 0 || c >= counts[i - 1]), 'cumulative buckets')
  }
  // Texts: 4 calls of 3 and 3 of 1 from embed, 1 from infer.
  const texts = 4 * 3 + 3 + 1
  const size = fams.cuda_engine_batch_size.metrics[0]
  assert.ok(Number(size.count) >= 1 && Number(size.count) <= N + 1, `passes: ${size.count}`)
  assert.equal(Number(size.sum), texts, 'every text went through one pass')
  assert.ok(Number(fams.cuda_engine_batch_tokens.metrics[0].sum) > texts)
  assert.equal(value(fams, 'cuda_engine_model_passes_total', { backend: 'cpu' }), Number(size.count))
  assert.equal(value(fams, 'cuda_engine_in_flight'), 0)
  assert.equal(value(fams, 'cuda_engine_queue_depth'), 0)
  assert.equal(fams.cuda_engine_gpu_memory_bytes.metrics.length, 0, 'no GPU memory on the CPU')
  const info = fams.cuda_engine_info.metrics[0]
  assert.equal(info.labels.backend, 'cpu')
  assert.equal(info.labels.model, 'all-MiniLM-L6-v2')

  // The JSON form has the same numbers.
  const json = engine.metrics({ format: 'json' })
  assert.deepEqual(engine.metrics({ format: 'prometheus' }), engine.metrics())
  const count = (list, labels) => list.filter((r) => labelsMatch({ labels: r }, labels)).reduce((s, r) => s + r.count, 0)
  assert.equal(count(json.requests, { type: 'embed' }), N)
  assert.equal(count(json.requests, { type: 'echo' }), M)
  assert.equal(count(json.errors, { type: 'embedding', code: 'E_INVALID_ARG' }), K)
  assert.equal(json.latency.length, sampleLines(text).filter((s) => s.name === `${lat}_count`).length)
  for (const l of json.latency) {
    const series = histSeries(text, lat, { type: l.type, backend: l.backend })
    assert.equal(series.count, l.count)
    assert.ok(Math.abs(series.sum - l.sum_seconds) < 1e-9)
    for (const b of l.buckets) assert.equal(series.le[String(b.le)], b.count, `le=${b.le}`)
  }
  assert.equal(json.batches.size.count, Number(size.count))
  assert.equal(json.batches.size.sum, texts)
  assert.deepEqual(json.queue, { depth: 0, in_flight: 0 })
  assert.deepEqual(json.worker, { restarts: 0, in_flight: 0 })
  assert.deepEqual(json.gpu_memory_bytes, [])
  assert.equal(json.info.model, 'all-MiniLM-L6-v2')
})

test('indexes and searches are reported; a closed engine keeps its final counts', async () => {
  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  const index = await engine.createIndex('docs', { dims: 384, device: 'cpu', dtype: 'fp32' })
  const [a, b] = await engine.embed(['first doc', 'second doc'])
  await index.upsert(['a', 'b'], [a, b])
  const hits = await engine.search('first', { index: 'docs', k: 1 })
  assert.deepEqual(hits.ids, ['a'])
  let fams = families(engine.metrics())
  assert.equal(value(fams, 'cuda_engine_index_vectors', { index: 'docs' }), 2)
  assert.equal(value(fams, 'cuda_engine_index_bytes', { index: 'docs' }), engine.metrics({ format: 'json' }).indexes[0].bytes)
  assert.equal(value(fams, 'cuda_engine_requests_total', { type: 'search' }), 1)
  assert.equal(histCount(engine.metrics(), 'cuda_engine_request_duration_seconds', { type: 'search', backend: 'cpu' }), 1)
  await engine.close()
  assert.equal((await rejection(engine.embed('late'))).code, 'E_CLOSED')
  fams = families(engine.metrics())
  assert.equal(value(fams, 'cuda_engine_requests_total', { type: 'embed' }), 2)
  assert.equal(value(fams, 'cuda_engine_errors_total', { type: 'embed', code: 'E_CLOSED' }), 1)
  assert.equal(Number(fams.cuda_engine_batch_size.metrics[0].sum), 3, 'pass histograms outlive the model')
})

test('bad options throw E_INVALID_ARG naming the key', async () => {
  const engine = await Engine.open({ model: modelDir, device: 'cpu' })
  try {
    for (const [opts, re] of [
      [{ formt: 'json' }, /`options\.formt`.*did you mean `format`/],
      [{ format: 'xml' }, /`options\.format` must be 'prometheus' or 'json', got "xml"/],
      [{ format: 1 }, /`options\.format`.*a number/],
      ['json', /`options` must be an object/],
    ]) {
      assert.throws(() => engine.metrics(opts), (e) => e.code === 'E_INVALID_ARG' && re.test(e.message), JSON.stringify(opts))
      assert.throws(() => addon.metrics(opts), (e) => e.code === 'E_INVALID_ARG' && re.test(e.message))
    }
    assert.equal(typeof engine.metrics(null), 'string')
    assert.equal(typeof engine.metrics({ format: undefined }), 'string')
  } finally {
    await engine.close()
  }
})

test('the module-level metrics() reports the default engine', () => {
  const text = addon.metrics()
  const fams = families(text)
  assert.equal(fams.cuda_engine_info.metrics.length, 1)
  assert.equal(typeof addon.metrics({ format: 'json' }).requests, 'object')
})
