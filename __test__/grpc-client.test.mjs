// The remote Open Inference Protocol client (EngineOptions.remote,
// docs/grpc.md "Client") against a real server nobody here wrote: MLServer
// 1.7.1 (from .venv-grpc, scripts/python-grpc-env.sh) serving two
// deterministic test models (tests/mlserver/): `hash-embedder` (BYTES text ->
// FP32 [n, 8]) and `tensor-math` (FP32 / INT64 tensors). Every tensor the
// client receives is compared exactly with the models' formulas, recomputed
// here (and cross-checked once against tests/mlserver/formulas.py).
//
// Skips (printing `SKIPPED: <reason>`) only when the Python venv cannot be
// set up; everything else failing is a failure.
import test from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
// "An engine without a local model": nothing named (the default locations
// do not count for `auto` when a remote is configured).
delete process.env.CUDA_ENGINE_MODEL

let python = null
let skip = false
try {
  python = execFileSync('bash', [path.join(root, 'scripts/python-grpc-env.sh')], {
    encoding: 'utf8',
    timeout: 600_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim()
} catch (e) {
  skip = `the Python gRPC venv (.venv-grpc: MLServer 1.7.1) could not be set up: ${String(e.stderr || e.message).trim().split('\n').slice(-3).join(' | ')}`
  console.log(`SKIPPED: ${skip}`)
}

/** A TCP port that was free a moment ago. */
async function freePort() {
  return await new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function waitForPort(port, ms) {
  const until = Date.now() + ms
  while (Date.now() < until) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1')
      c.once('connect', () => { c.destroy(); resolve(true) })
      c.once('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`)
}

/** MLServer serving tests/mlserver on fixed ports (so it can come back on the same one). */
class MLServer {
  constructor(ports) {
    this.ports = ports
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-engine-mlserver-'))
    fs.cpSync(path.join(root, 'tests/mlserver'), this.dir, { recursive: true })
    fs.writeFileSync(path.join(this.dir, 'settings.json'), JSON.stringify({
      debug: false, parallel_workers: 0, host: '127.0.0.1',
      http_port: ports.http, grpc_port: ports.grpc, metrics_port: ports.metrics,
    }))
    this.log = ''
  }

  async start() {
    const bin = path.join(path.dirname(python), 'mlserver')
    // Its own process group, so that kill() takes every process it started.
    this.proc = spawn(bin, ['start', this.dir], {
      cwd: this.dir,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONPATH: this.dir },
    })
    const keep = (d) => { this.log = (this.log + d).slice(-20_000) }
    this.proc.stdout.on('data', keep)
    this.proc.stderr.on('data', keep)
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve))
    await Promise.race([
      waitForPort(this.ports.grpc, 60_000),
      this.exited.then((code) => { throw new Error(`mlserver exited (${code}):\n${this.log}`) }),
    ])
    // The port opens before the models load: wait until one answers.
  }

  async kill(signal = 'SIGKILL') {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return
    try { process.kill(-this.proc.pid, signal) } catch {}
    await this.exited
  }
}

const f32 = Math.fround
const MOD = 1000003
/** tests/mlserver/formulas.py's embed_one, as float32 values. */
function hashEmbed(text, normalize = false) {
  const bytes = Buffer.from(text, 'utf8')
  const v = []
  for (let j = 0; j < 8; j++) {
    let h = j
    for (const b of bytes) h = (h * 31 + b + 1) % MOD
    v.push(h / MOD - 0.5)
  }
  if (normalize) {
    let n = 0
    for (const x of v) n += x * x
    n = Math.sqrt(n)
    return Float32Array.from(v.map((x) => x / n))
  }
  return Float32Array.from(v.map(f32))
}

const texts = ['hello world', 'héllo wörld — ☃', '', 'A man is eating food.']

let server = null
let endpoint = null
let engine = null
const remote = () => ({ endpoints: endpoint, model: 'hash-embedder' })

test.before(async () => {
  if (skip) return
  const ports = { http: await freePort(), grpc: await freePort(), metrics: await freePort() }
  server = new MLServer(ports)
  endpoint = `grpc://127.0.0.1:${ports.grpc}`
  await server.start()
  engine = await Engine.open({ remote: remote() })
  // Models load after the port opens: retry until hash-embedder answers.
  const until = Date.now() + 60_000
  for (;;) {
    try {
      await engine.embed('warm-up', { target: 'remote', timeoutMs: 5000 })
      break
    } catch (e) {
      if (Date.now() > until) throw new Error(`MLServer did not serve hash-embedder: ${e.message}\n${server.log}`)
      await new Promise((r) => setTimeout(r, 200))
    }
  }
})

test.after(async () => {
  await engine?.close()
  await server?.kill('SIGTERM')
  if (server) fs.rmSync(server.dir, { recursive: true, force: true })
})

test('the JS formula equals tests/mlserver/formulas.py', { skip }, () => {
  for (const normalize of [false, true]) {
    const out = execFileSync(python, [path.join(root, 'tests/mlserver/formulas.py'), JSON.stringify({ texts, normalize })], { encoding: 'utf8' })
    const rows = JSON.parse(out)
    rows.forEach((row, i) => assert.deepEqual(Float32Array.from(row), hashEmbed(texts[i], normalize), `${texts[i]} normalize=${normalize}`))
  }
})

test("embed with target 'remote': exactly the remote model's vectors", { skip }, async () => {
  const many = await engine.embed(texts, { target: 'remote' })
  assert.equal(many.length, texts.length)
  many.forEach((v, i) => {
    assert.ok(v instanceof Float32Array)
    assert.deepEqual(v, hashEmbed(texts[i]), texts[i])
  })
  const one = await engine.embed('just one', { target: 'remote' })
  assert.deepEqual(one, hashEmbed('just one'))
  // `normalize` travels as the request parameter the model reads.
  const norm = await engine.embed(texts.slice(0, 2), { target: 'remote', normalize: true })
  norm.forEach((v, i) => assert.deepEqual(v, hashEmbed(texts[i], true)))
  assert.deepEqual(await engine.embed([], { target: 'remote' }), [])
})

test("target 'auto' on an engine without a local model goes to the remote", { skip }, async () => {
  assert.equal((await engine.health()).model, null)
  const v = await engine.embed(texts, {})
  v.forEach((x, i) => assert.deepEqual(x, hashEmbed(texts[i])))
  // submit: an embedding envelope, the local result shape, backend 'remote'.
  for (const target of ['auto', 'remote']) {
    const r = await engine.submit({ id: 'e1', type: 'embedding', payload: { texts: texts.slice(0, 2) } }, { target })
    assert.equal(r.backend, 'remote')
    assert.equal(r.id, 'e1')
    assert.equal(r.result.model, 'hash-embedder')
    assert.equal(r.result.dims, 8)
    r.result.embeddings.forEach((e, i) => assert.deepEqual(Float32Array.from(e), hashEmbed(texts[i])))
  }
})

test("infer with target 'remote' and 'auto': FP32 and INT64 tensors exactly", { skip }, async () => {
  const x = Float32Array.from([1, 2.5, -3.25, 0.1, 1e-8, 3.4e38 / 4])
  const ids = BigInt64Array.from([1n, -2n, 3000000000n, 0n])
  const req = {
    id: 'r-7',
    model_name: 'tensor-math',
    inputs: [
      { name: 'x', datatype: 'FP32', shape: [2, 3], data: x },
      { name: 'ids', datatype: 'INT64', shape: [4], data: ids },
    ],
  }
  const want = Float32Array.from(x, (v) => f32(f32(v * 2) + 0.5))
  for (const target of ['remote', 'auto']) {
    const res = await engine.infer(req, { target })
    assert.equal(res.model_name, 'tensor-math')
    assert.equal(res.id, 'r-7')
    const y = res.outputs.find((o) => o.name === 'y')
    const sq = res.outputs.find((o) => o.name === 'ids_sq')
    assert.equal(y.datatype, 'FP32')
    assert.deepEqual(y.shape, [2, 3])
    assert.deepEqual(y.data, want)
    assert.equal(sq.datatype, 'INT64')
    assert.deepEqual(sq.shape, [4])
    assert.deepEqual(Array.from(sq.data, BigInt), Array.from(ids, (v) => v * v + 1n))
  }
  // Through submit (JSON tensors).
  const r = await engine.submit({
    type: 'inference',
    payload: { model_name: 'tensor-math', inputs: [
      { name: 'x', datatype: 'FP32', shape: [1, 2], data: [1.5, -2] },
      { name: 'ids', datatype: 'INT64', shape: [1], data: [7] },
    ] },
  }, { target: 'remote' })
  assert.equal(r.backend, 'remote')
  assert.deepEqual(r.result.outputs.find((o) => o.name === 'y').data, [3.5, -3.5])
  assert.deepEqual(r.result.outputs.find((o) => o.name === 'ids_sq').data, [50])
  // A request naming no model goes to remote.model.
  const e = await engine.infer({ inputs: [{ name: 'text', datatype: 'BYTES', shape: [1], data: ['abc'] }] }, { target: 'remote' })
  assert.equal(e.model_name, 'hash-embedder')
  assert.deepEqual(e.outputs[0].data, hashEmbed('abc'))
})

test('remote failures: E_REMOTE naming the endpoint, E_TIMEOUT, E_CANCELLED', { skip }, async () => {
  // An unknown model: the server's NOT_FOUND, not retried.
  let e = await rejection(engine.infer({ model_name: 'no-such-model', inputs: [{ name: 'x', datatype: 'FP32', shape: [1], data: [1] }] }, { target: 'remote' }))
  assert.equal(e.code, 'E_REMOTE')
  assert.ok(e.message.includes(endpoint) && /NotFound|not found/i.test(e.message), e.message)
  // The model raises: a non-OK status.
  e = await rejection(engine.embed(['fail'], { target: 'remote' }))
  assert.equal(e.code, 'E_REMOTE')
  assert.ok(e.message.includes(endpoint) && e.message.includes('asked to fail'), e.message)
  // The call's deadline.
  let t = Date.now()
  e = await rejection(engine.embed(['sleep:3000'], { target: 'remote', timeoutMs: 300 }))
  assert.equal(e.code, 'E_TIMEOUT', e.message)
  assert.ok(Date.now() - t < 1500, `${Date.now() - t} ms`)
  // remote.timeoutMs bounds calls that give none.
  const short = await Engine.open({ remote: { ...remote(), timeoutMs: 300 } })
  t = Date.now()
  e = await rejection(short.embed(['sleep:3000']))
  assert.equal(e.code, 'E_TIMEOUT', e.message)
  assert.ok(Date.now() - t < 1500, `${Date.now() - t} ms`)
  await short.close()
  // The AbortSignal cancels the RPC.
  const ac = new AbortController()
  setTimeout(() => ac.abort(), 150)
  t = Date.now()
  e = await rejection(engine.embed(['sleep:3000'], { target: 'remote', signal: ac.signal }))
  assert.equal(e.code, 'E_CANCELLED')
  assert.ok(Date.now() - t < 1500, `${Date.now() - t} ms`)
  // The engine still serves.
  assert.deepEqual(await engine.embed('after', { target: 'remote' }), hashEmbed('after'))
})

test('an unreachable remote: open neither fails nor waits; calls are E_REMOTE fast; health is degraded', { skip }, async () => {
  const port = await freePort()
  const url = `grpc://127.0.0.1:${port}`
  let t = Date.now()
  const e1 = await Engine.open({ remote: url })
  assert.ok(Date.now() - t < 1000, `open took ${Date.now() - t} ms`)
  t = Date.now()
  const e = await rejection(e1.embed('x'))
  assert.equal(e.code, 'E_REMOTE')
  assert.ok(e.message.includes(url) && e.message.includes('unreachable'), e.message)
  assert.ok(Date.now() - t < 1500, `${Date.now() - t} ms`)
  const h = await e1.health()
  assert.equal(h.status, 'degraded')
  assert.equal(h.remote.endpoints[0].url, url)
  assert.equal(h.remote.endpoints[0].ready, false)
  assert.equal(h.remote.model, 'all-MiniLM-L6-v2')
  assert.equal(h.remote.failures, 1)
  assert.ok(h.errors.some((x) => x.startsWith(`remote: ${url}`)), h.errors.join('; '))
  await e1.close()
})

test('health lists the endpoints, their probe and the call counts', { skip }, async () => {
  const h = await engine.health()
  assert.equal(h.status, 'ok', h.errors.join('; '))
  assert.deepEqual(h.remote.endpoints.map((x) => [x.url, x.ready, x.error]), [[endpoint, true, null]])
  assert.equal(h.remote.model, 'hash-embedder')
  assert.ok(h.remote.calls >= 5 && h.remote.failures >= 1, JSON.stringify(h.remote))
  assert.equal(h.remote.in_flight, 0)
})

test("options: target 'remote' needs a remote; misspelled remote keys are named", async () => {
  const local = await Engine.open()
  let e = await rejection(local.embed('x', { target: 'remote' }))
  assert.equal(e.code, 'E_INVALID_ARG')
  assert.ok(e.message.includes('`options.target`') && e.message.includes('EngineOptions.remote'), e.message)
  e = await rejection(local.infer({ inputs: [] }, { target: 'remote' }))
  assert.equal(e.code, 'E_INVALID_ARG')
  e = await rejection(local.submit({ type: 'echo', payload: 1 }, { target: 'remote' }))
  assert.equal(e.code, 'E_INVALID_ARG')
  e = await rejection(local.embed('x', { target: 'remot' }))
  assert.ok(e.message.includes("'remote'"), e.message)
  await local.close()
  e = await rejection(Engine.open({ remote: { endpoints: 'grpc://127.0.0.1:1', timeoutMS: 5 } }))
  assert.equal(e.code, 'E_INVALID_ARG')
  assert.ok(e.message.includes('`options.remote.timeoutMS`') && e.message.includes('did you mean `timeoutMs`'), e.message)
  e = await rejection(Engine.open({ remote: 'http://127.0.0.1:1' }))
  assert.ok(e.message.includes('grpc://'), e.message)
  assert.deepEqual(addon.optionNames().remote.sort(), ['caFile', 'connectTimeoutMs', 'embedInput', 'embedOutput', 'endpoints', 'maxMessageBytes', 'model', 'retries', 'timeoutMs'])
})

// Last: it kills and restarts the server.
test('server killed mid-call: E_REMOTE within the deadline; the client reconnects when it is back on the same port', { skip }, async () => {
  const inflight = [1, 2, 3].map(() => rejection(engine.embed(['sleep:5000'], { target: 'remote', timeoutMs: 20_000 })))
  await new Promise((r) => setTimeout(r, 300))
  const t = Date.now()
  await server.kill('SIGKILL')
  for (const e of await Promise.all(inflight)) {
    assert.equal(e.code, 'E_REMOTE', e.message)
    assert.ok(e.message.includes(endpoint), e.message)
  }
  const failedIn = Date.now() - t
  assert.ok(failedIn < 3000, `in-flight calls failed ${failedIn} ms after the kill`)
  // Down: fast E_REMOTE.
  const down = await rejection(engine.embed('x', { target: 'remote' }))
  assert.equal(down.code, 'E_REMOTE')
  // Back on the same port: the same engine serves again.
  await server.start()
  const until = Date.now() + 60_000
  let v
  for (;;) {
    try {
      v = await engine.embed('back', { target: 'remote', timeoutMs: 5000 })
      break
    } catch (e) {
      assert.equal(e.code, 'E_REMOTE', e.message)
      if (Date.now() > until) throw e
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  assert.deepEqual(v, hashEmbed('back'))
  console.log(`grpc-client: in-flight calls failed ${failedIn} ms after the server was killed`)
})
