// The remote client (EngineOptions.remote) against this project's own gRPC
// server, `cuda-worker --grpc` (target/release/cuda-worker): remote
// embeddings equal the in-process ones; the failure cases (deadline,
// AbortSignal, unreachable, a server killed with calls in flight and back on
// the same port). Needs the model (`bash scripts/fetch-model.sh`) and the
// release cuda-worker (`cargo build --release -p cuda-worker`).
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, rejection } from './helpers.mjs'

const { Engine } = addon
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modelDir = path.join(root, 'models/all-MiniLM-L6-v2')
const workerBin = path.join(root, 'target/release/cuda-worker')
delete process.env.CUDA_ENGINE_MODEL

assert.ok(fs.existsSync(path.join(modelDir, 'model.safetensors')), 'model missing: run `bash scripts/fetch-model.sh`')
assert.ok(fs.existsSync(workerBin), 'cuda-worker missing: run `cargo build --release -p cuda-worker`')

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

/** `cuda-worker --grpc 127.0.0.1:PORT` with the model, on the CPU. */
class Server {
  constructor(port) {
    this.port = port
    this.stderr = ''
  }

  async start() {
    this.proc = spawn(workerBin, [
      '--grpc', `127.0.0.1:${this.port}`, '--preload',
      '--options', JSON.stringify({ model: modelDir, device: 'cpu' }),
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve))
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no 'grpc listening on' after 60 s:\n${this.stderr}`)), 60_000)
      this.proc.stderr.on('data', (d) => {
        this.stderr = (this.stderr + d).slice(-20_000)
        if (this.stderr.includes('grpc listening on')) { clearTimeout(timer); resolve() }
      })
      this.proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`cuda-worker exited (${code}):\n${this.stderr}`)) })
    })
  }

  async kill(signal = 'SIGKILL') {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return
    this.proc.kill(signal)
    await this.exited
  }
}

const cosine = (a, b) => {
  let d = 0, na = 0, nb = 0
  for (let i = 0; i < a.length; i++) { d += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
  return d / Math.sqrt(na * nb)
}

const texts = ['hello world', 'A man is eating food.', 'Ünïcödé — ☃ and emoji 🚀', 'x'.repeat(3000), '']
/** A batch that keeps a 2-core CPU busy for seconds. */
const heavy = Array.from({ length: 1024 }, (_, i) => `sentence number ${i} `.repeat(20))

const port = await freePort()
const url = `grpc://127.0.0.1:${port}`
const server = new Server(port)
await server.start()
const local = await Engine.open({ model: modelDir, device: 'cpu' })
const remote = await Engine.open({ remote: url })
test.after(async () => {
  await local.close()
  await remote.close()
  await server.kill('SIGTERM')
})

test('remote embeddings equal the in-process ones (cosine >= 0.99999)', async () => {
  for (const normalize of [undefined, false]) {
    const want = await local.embed(texts, { normalize })
    const got = await remote.embed(texts, { target: 'remote', normalize })
    let worst = 1
    let maxDiff = 0
    got.forEach((v, i) => {
      assert.equal(v.length, 384)
      worst = Math.min(worst, cosine(v, want[i]))
      for (let j = 0; j < v.length; j++) maxDiff = Math.max(maxDiff, Math.abs(v[j] - want[i][j]))
    })
    assert.ok(worst >= 0.99999, `cosine ${worst}`)
    console.log(`grpc-client-worker: normalize=${normalize}: min cosine ${worst}, max |diff| ${maxDiff}`)
  }
  // `auto` on the model-less engine, and submit.
  const auto = await remote.embed('hello world')
  assert.ok(cosine(auto, (await local.embed('hello world'))) >= 0.99999)
  const r = await remote.submit({ type: 'embedding', payload: { text: 'hello world' } })
  assert.equal(r.backend, 'remote')
  assert.equal(r.result.dims, 384)
  // infer with text input, through the remote.
  const req = { inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], data: texts.slice(0, 2) }], outputs: [{ name: 'sentence_embedding' }] }
  const a = (await local.infer(req)).outputs[0]
  const b = (await remote.infer(req, { target: 'remote' })).outputs[0]
  assert.deepEqual(b.shape, a.shape)
  assert.ok(cosine(a.data.subarray(0, 384), b.data.subarray(0, 384)) >= 0.99999)
  // truncate: false travels: the remote engine's refusal comes back inside E_REMOTE,
  // with its code (x-cuda-engine-code) and message.
  const e = await rejection(remote.embed(['word '.repeat(600)], { target: 'remote', truncate: false }))
  assert.equal(e.code, 'E_REMOTE')
  assert.ok(e.message.includes(url) && e.message.includes('(E_INVALID_ARG)') && e.message.includes('truncate is false'), e.message)
})

test('deadline -> E_TIMEOUT; AbortSignal -> E_CANCELLED; unreachable -> E_REMOTE fast', async () => {
  let t = Date.now()
  let e = await rejection(remote.embed(heavy, { target: 'remote', timeoutMs: 100 }))
  assert.equal(e.code, 'E_TIMEOUT', e.message)
  assert.ok(Date.now() - t < 1000, `${Date.now() - t} ms`)
  const ac = new AbortController()
  setTimeout(() => ac.abort(), 100)
  t = Date.now()
  e = await rejection(remote.embed(heavy, { target: 'remote', signal: ac.signal }))
  assert.equal(e.code, 'E_CANCELLED', e.message)
  assert.ok(Date.now() - t < 1000, `${Date.now() - t} ms`)
  const nowhere = await Engine.open({ remote: `grpc://127.0.0.1:${await freePort()}` })
  t = Date.now()
  e = await rejection(nowhere.embed('x'))
  assert.equal(e.code, 'E_REMOTE', e.message)
  const fast = Date.now() - t
  assert.ok(fast < 1000, `${fast} ms`)
  await nowhere.close()
  console.log(`grpc-client-worker: unreachable endpoint -> E_REMOTE in ${fast} ms (2 retries)`)
  // Still serving after the cancelled calls.
  assert.equal((await remote.embed('still here', { target: 'remote' })).length, 384)
})

test('server killed with calls in flight: E_REMOTE within the deadline; reconnects on the same port', async () => {
  const inflight = [1, 2].map(() => rejection(remote.embed(heavy, { target: 'remote', timeoutMs: 60_000 })))
  await new Promise((r) => setTimeout(r, 300))
  const t = Date.now()
  await server.kill('SIGKILL')
  for (const e of await Promise.all(inflight)) {
    assert.equal(e.code, 'E_REMOTE', e.message)
    assert.ok(e.message.includes(url), e.message)
  }
  const failedIn = Date.now() - t
  assert.ok(failedIn < 3000, `${failedIn} ms`)
  const down = await rejection(remote.embed('x', { target: 'remote' }))
  assert.equal(down.code, 'E_REMOTE')
  const h = await remote.health()
  assert.equal(h.status, 'degraded')
  assert.equal(h.remote.endpoints[0].ready, false)
  await server.start()
  const v = await remote.embed('back again', { target: 'remote' })
  assert.ok(cosine(v, await local.embed('back again')) >= 0.99999)
  const h2 = await remote.health()
  assert.equal(h2.remote.endpoints[0].ready, true, JSON.stringify(h2.remote))
  assert.equal(h2.status, 'ok', h2.errors.join('; '))
  console.log(`grpc-client-worker: in-flight calls failed ${failedIn} ms after the server was killed`)
})

test('grpcs:// with caFile against cuda-worker --tls-cert; without the CA it is E_REMOTE', async (t) => {
  const dir = fs.mkdtempSync(path.join(root, 'target/tmp-grpc-tls-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  // A CA, and a server certificate for localhost signed by it.
  const ca = path.join(dir, 'ca.pem')
  const cert = path.join(dir, 'cert.pem')
  const key = path.join(dir, 'key.pem')
  const { execFileSync } = await import('node:child_process')
  const ssl = (...args) => execFileSync('openssl', args, { stdio: 'ignore', cwd: dir })
  try {
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', ca, '-days', '1', '-subj', '/CN=cuda-engine test CA')
    ssl('req', ...ec, '-keyout', key, '-out', 'server.csr', '-subj', '/CN=localhost')
    fs.writeFileSync(path.join(dir, 'ext.cnf'), 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n')
    ssl('x509', '-req', '-in', 'server.csr', '-CA', ca, '-CAkey', 'ca.key', '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', 'ext.cnf')
  } catch (e) {
    t.skip(`openssl could not make a certificate: ${e.message}`)
    return
  }
  const tlsPort = await freePort()
  const tls = spawn(workerBin, ['--grpc', `127.0.0.1:${tlsPort}`, '--preload', '--tls-cert', cert, '--tls-key', key,
    '--options', JSON.stringify({ model: modelDir, device: 'cpu' })], { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = new Promise((resolve) => tls.once('exit', resolve))
  t.after(async () => { tls.kill('SIGKILL'); await exited })
  let log = ''
  await new Promise((resolve, reject) => {
    tls.stderr.on('data', (d) => { log += d; if (log.includes('grpc listening on')) resolve() })
    tls.once('exit', (code) => reject(new Error(`cuda-worker --tls-cert exited (${code}): ${log}`)))
  })
  const good = await Engine.open({ remote: { endpoints: `grpcs://localhost:${tlsPort}`, caFile: ca } })
  const v = await good.embed('over TLS')
  assert.ok(cosine(v, await local.embed('over TLS')) >= 0.99999)
  await good.close()
  // Not trusted by the built-in roots.
  const bad = await Engine.open({ remote: { endpoints: `grpcs://localhost:${tlsPort}`, retries: 0 } })
  const e = await rejection(bad.embed('x'))
  assert.equal(e.code, 'E_REMOTE', e.message)
  assert.ok(e.message.includes(`grpcs://localhost:${tlsPort}`), e.message)
  await bad.close()
  // Plain gRPC to a TLS port: E_REMOTE too, not a hang.
  const plain = await Engine.open({ remote: { endpoints: `grpc://127.0.0.1:${tlsPort}`, retries: 0, timeoutMs: 5000 } })
  const e2 = await rejection(plain.embed('x'))
  assert.ok(['E_REMOTE', 'E_TIMEOUT'].includes(e2.code), e2.message)
  await plain.close()
})
