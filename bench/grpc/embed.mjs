// gRPC against in-process and HTTP, one run, one machine (issue 13):
//   - one short text, sequential calls: p50/p99 latency;
//   - batches of 512, sequential calls: sentences/s;
//   - batches of 128, all in flight (EmbedStream vs concurrent in-process calls);
//   - a 64 MiB payload round trip (Submit echo vs in-process submit echo);
// through: the in-process addon (the baseline), the engine's own remote
// client (`Engine.open({ remote })`, Rust/tonic, ModelInfer), @grpc/grpc-js
// on cuda_engine.v1.Engine (Embed, EmbedStream, Submit), the HTTP service
// (POST /api/v1/submit), and Python tritonclient (ModelInfer; when
// .venv-grpc exists, scripts/python-grpc-env.sh).
//
//   node bench/grpc/embed.mjs [--model DIR] [--device cpu|cuda] [--single N] [--batches N] [--json FILE] [--server-args A,B] [--only single] [--sequential]
//
// The single-text part also times grpc.health.v1 Check through the same
// grpc-js channel: an RPC the server answers without work, so its p50 is
// the transport's floor (HTTP/2 on loopback plus grpc-js's client-side
// call path), and `beyond_floor_p50_ms` is what Embed adds over in-process
// embed beyond that floor. The single-text paths are timed interleaved.
import { spawn, spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const model = path.resolve(opt('--model', process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')))
const device = opt('--device', 'cpu')
const singleN = Number(opt('--single', 1000))
const batchesN = Number(opt('--batches', device === 'cpu' ? 3 : 20))
const jsonOut = opt('--json')
const workerBin = opt('--worker', path.join(root, 'target/release/cuda-worker'))
// Extra server flags, comma-separated (e.g. --server-args --grpc-gzip-responses
// to measure compressed answers against the default in the same machine run).
const serverArgs = (opt('--server-args', '') || '').split(',').filter(Boolean)
const only = opt('--only')
// --sequential: time each single-text path in its own block of calls (the
// server stays warm between its calls) instead of interleaved.
const sequential = args.includes('--sequential')

const { Engine } = require(path.join(root, 'index.js'))
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')
const pkg = grpc.loadPackageDefinition(
  protoLoader.loadSync(['cuda_engine/v1/engine.proto', 'grpc/health/v1/health.proto'], {
    includeDirs: [path.join(root, 'proto')],
    keepCase: true,
    longs: String,
    defaults: true,
    oneofs: true,
  }),
)

// Deterministic sentences of ~10-40 words.
const WORDS = 'the a engine vector search model token batch stream server client latency fast small large query index embedding network machine learning data graph node rust cuda kernel memory'.split(' ')
let seed = 42
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
const sentence = () => Array.from({ length: 10 + Math.floor(rnd() * 30) }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(' ')
const SHORT = 'a short sentence to embed'
const batch512 = Array.from({ length: 512 }, sentence)
const batch128s = Array.from({ length: Math.max(8, batchesN * 4) }, () => Array.from({ length: 128 }, sentence))

const ms = () => Number(process.hrtime.bigint()) / 1e6
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return +s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))].toFixed(3)
}
async function interleaved(paths, n = singleN) {
  const names = Object.keys(paths)
  const xs = Object.fromEntries(names.map((k) => [k, []]))
  const one = async (k) => {
    const t = ms()
    await paths[k]()
    xs[k].push(ms() - t)
  }
  for (let i = 0; i < 50; i++) for (const k of names) await paths[k]()
  if (sequential) {
    for (const k of names) for (let i = 0; i < n; i++) await one(k)
  } else {
    for (let i = 0; i < n; i++) for (const k of names) await one(k)
  }
  return Object.fromEntries(names.map((k) => [k, { p50_ms: pct(xs[k], 50), p99_ms: pct(xs[k], 99), n }]))
}
async function throughput(fn, texts, n = batchesN) {
  await fn()
  const t = ms()
  for (let i = 0; i < n; i++) await fn()
  return { sentences_per_s: Math.round((texts * n * 1000) / (ms() - t)), calls: n }
}
const unary = (client, method, req, deadlineMs = 600_000) =>
  new Promise((resolve, reject) =>
    client[method](req, { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(err) : resolve(res))),
  )

function startServer() {
  const proc = spawn(
    workerBin,
    ['--grpc', '127.0.0.1:0', '--grpc-max-message-bytes', String(128 << 20), ...serverArgs,
      '--options', JSON.stringify({ model, device, maxEnvelopeBytes: 128 << 20, maxTextsPerCall: 100000 })],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CUDA_WORKER_PATH: '' } },
  )
  let err = ''
  return new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      err += d
      const m = /grpc listening on (\S+)/.exec(err)
      if (m) resolve({ proc, addr: m[1] })
    })
    proc.on('exit', (c) => reject(new Error(`cuda-worker --grpc exited ${c}: ${err}`)))
  })
}
function startHttp() {
  const proc = spawn(process.execPath, [path.join(root, 'bin/cuda-service.mjs'), '--port', '0', '--no-log', '--max-body', String(128 << 20),
    '--options', JSON.stringify({ model, device, maxEnvelopeBytes: 128 << 20, maxTextsPerCall: 100000 })],
  { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CUDA_WORKER_PATH: '' } })
  let out = ''
  return new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d
      const m = /"listening":"([^"]+)"/.exec(out)
      if (m) resolve({ proc, url: m[1] })
    })
    proc.on('exit', (c) => reject(new Error(`cuda-service exited ${c}`)))
  })
}

const results = { device, model: path.basename(model), single_text: {}, batch_512: {}, batch_128_all_in_flight: {}, payload_64mib_echo: {} }
const local = await Engine.open({ model, device, maxTextsPerCall: 100000, maxEnvelopeBytes: 128 << 20 })
const server = await startServer()
const http = await startHttp()
// The server names its model after the model directory.
// A CPU batch of 512 on a busy machine can pass the default 30 s.
const remote = await Engine.open({ remote: { endpoints: [`grpc://${server.addr}`], maxMessageBytes: 128 << 20, model: path.basename(model), timeoutMs: 600_000 } })
const creds = grpc.credentials.createInsecure()
const gjsOptions = { 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 }
const gjs = new pkg.cuda_engine.v1.Engine(server.addr, creds, gjsOptions)
// Same channel options, on the same channel (grpc-js shares a channel per
// target and options), for the floor.
const gjsHealth = new pkg.grpc.health.v1.Health(server.addr, creds, gjsOptions)
// grpc-js buffers every message for a possible retry unless told not to.
const gjsNoRetry = new pkg.cuda_engine.v1.Engine(server.addr, creds, { ...gjsOptions, 'grpc.enable_retries': 0 })
const post = async (body) => {
  const r = await fetch(`${http.url}/api/v1/submit`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`)
  return r.json()
}
try {
  // Everything ready (models loaded) before timing.
  await local.embed([SHORT])
  await remote.embed([SHORT], { target: 'remote' })
  await unary(gjs, 'Embed', { texts: [SHORT] })
  await post(JSON.stringify({ type: 'embedding', payload: { texts: [SHORT] } }))

  // Interleaved: each round times one call of every path in turn, so a
  // drift in machine load (2 cores shared with the server) lands on all of
  // them alike instead of on whichever ran last.
  const r = results.single_text
  const paths = {
    in_process: () => local.embed([SHORT]),
    remote_client: () => remote.embed([SHORT], { target: 'remote' }),
    grpc_js_embed: () => unary(gjs, 'Embed', { texts: [SHORT] }),
    grpc_js_embed_no_retries: () => unary(gjsNoRetry, 'Embed', { texts: [SHORT] }),
    grpc_js_health_check: () => unary(gjsHealth, 'Check', { service: '' }),
    http_submit: () => post(JSON.stringify({ type: 'embedding', payload: { texts: [SHORT] } })),
  }
  r.timing = sequential ? 'sequential blocks' : 'interleaved'
  Object.assign(r, await interleaved(paths))
  for (const k of ['remote_client', 'grpc_js_embed', 'grpc_js_embed_no_retries', 'http_submit']) r[k].added_p50_ms = +(r[k].p50_ms - r.in_process.p50_ms).toFixed(3)
  for (const k of ['grpc_js_embed', 'grpc_js_embed_no_retries']) r[k].beyond_floor_p50_ms = +(r[k].added_p50_ms - r.grpc_js_health_check.p50_ms).toFixed(3)
  if (only === 'single') throw Object.assign(new Error('only single'), { onlySingle: true })

  const b = results.batch_512
  b.in_process = await throughput(() => local.embed(batch512), 512)
  b.remote_client = await throughput(() => remote.embed(batch512, { target: 'remote' }), 512)
  b.grpc_js_embed = await throughput(() => unary(gjs, 'Embed', { texts: batch512 }), 512)
  const body512 = JSON.stringify({ type: 'embedding', payload: { texts: batch512 } })
  b.http_submit = await throughput(() => post(body512), 512)
  for (const k of ['remote_client', 'grpc_js_embed', 'http_submit']) b[k].vs_in_process = +(b[k].sentences_per_s / b.in_process.sentences_per_s).toFixed(3)

  // Batches of 128, all in flight at once.
  const c = results.batch_128_all_in_flight
  const allLocal = async () => Promise.all(batch128s.map((t) => local.embed(t)))
  await allLocal()
  let t = ms()
  await allLocal()
  c.in_process = { sentences_per_s: Math.round((batch128s.length * 128 * 1000) / (ms() - t)), requests: batch128s.length }
  const stream = () =>
    new Promise((resolve, reject) => {
      const call = gjs.EmbedStream()
      let left = batch128s.length
      call.on('data', (m) => {
        if (m.error) reject(new Error(`${m.error.code}: ${m.error.message}`))
        if (--left === 0) call.end()
      })
      call.on('error', reject)
      call.on('end', resolve)
      batch128s.forEach((texts, i) => call.write({ id: String(i), texts }))
    })
  await stream()
  t = ms()
  await stream()
  c.grpc_js_embed_stream = { sentences_per_s: Math.round((batch128s.length * 128 * 1000) / (ms() - t)), requests: batch128s.length }
  c.grpc_js_embed_stream.vs_in_process = +(c.grpc_js_embed_stream.sentences_per_s / c.in_process.sentences_per_s).toFixed(3)
  const allRemote = async () => Promise.all(batch128s.map((x) => remote.embed(x, { target: 'remote' })))
  await allRemote()
  t = ms()
  await allRemote()
  c.remote_client = { sentences_per_s: Math.round((batch128s.length * 128 * 1000) / (ms() - t)), requests: batch128s.length }
  c.remote_client.vs_in_process = +(c.remote_client.sentences_per_s / c.in_process.sentences_per_s).toFixed(3)

  // 64 MiB through an echo job: the payload travels base64 in the envelope
  // (the engine has no identity model for ModelInfer).
  const big = Buffer.alloc(64 << 20, 7).toString('base64')
  const env = JSON.stringify({ type: 'echo', payload_b64: big })
  const e = results.payload_64mib_echo
  const time3 = async (fn) => {
    await fn()
    const xs = []
    for (let i = 0; i < 3; i++) {
      const t0 = ms()
      await fn()
      xs.push(ms() - t0)
    }
    return { median_ms: pct(xs, 50) }
  }
  e.in_process_submit = await time3(() => local.submit(env))
  e.grpc_js_submit = await time3(() => unary(gjs, 'Submit', { json: env }))
  e.http_submit = await time3(() => post(env))

  // Python tritonclient against the same server, when its venv is there.
  const py = path.join(root, '.venv-grpc/bin/python')
  if (fs.existsSync(py)) {
    const f = path.join(root, 'bench/out/grpc_texts.json')
    fs.mkdirSync(path.dirname(f), { recursive: true })
    fs.writeFileSync(f, JSON.stringify({ short: SHORT, batch: batch512 }))
    const p = spawnSync(py, [path.join(root, 'bench/grpc/embed_tritonclient.py'), server.addr, f, String(singleN), String(batchesN), path.basename(model)], { encoding: 'utf8' })
    if (p.status === 0) {
      const tc = JSON.parse(p.stdout)
      r.tritonclient = { ...tc.single, added_p50_ms: +(tc.single.p50_ms - r.in_process.p50_ms).toFixed(3) }
      b.tritonclient = { ...tc.batch_512, vs_in_process: +(tc.batch_512.sentences_per_s / b.in_process.sentences_per_s).toFixed(3) }
    } else {
      results.tritonclient_error = p.stderr.slice(-2000)
    }
  } else {
    results.tritonclient = 'SKIPPED: no .venv-grpc (bash scripts/python-grpc-env.sh)'
  }
} catch (e) {
  if (!e.onlySingle) throw e
} finally {
  gjs.close()
  gjsHealth.close()
  gjsNoRetry.close()
  await remote.close()
  await local.close()
  server.proc.kill('SIGTERM')
  http.proc.kill('SIGTERM')
}
console.log(JSON.stringify(results, null, 1))
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 1))
