// bin/cuda-service.mjs: the real server in a child process, hit with fetch.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

const BIN = fileURLToPath(new URL('../bin/cuda-service.mjs', import.meta.url))

/** Start the service on a free port; resolves to {url, child, stop}. */
async function startService(args = [], env = {}) {
  const child = spawn(process.execPath, [BIN, '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const lines = readline.createInterface({ input: child.stdout })
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start: ${stderr}`)), 15000)
    lines.once('line', (l) => {
      clearTimeout(timer)
      resolve(JSON.parse(l).listening)
    })
    child.once('exit', (code) => reject(new Error(`service exited ${code}: ${stderr}`)))
  })
  const stop = async () => {
    if (child.exitCode !== null) return child.exitCode
    const exited = new Promise((r) => child.once('exit', (code) => r(code)))
    child.kill('SIGTERM')
    return exited
  }
  return { url, child, stop, stderr: () => stderr }
}

const post = (url, body, headers = {}) =>
  fetch(`${url}/api/v1/submit`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } })

test('health, echo, bytes, and error statuses', async (t) => {
  const svc = await startService(['--max-body', '4096', '--options', JSON.stringify({ maxEnvelopeBytes: 1000 })])
  t.after(svc.stop)

  let r = await fetch(`${svc.url}/api/v1/health`)
  assert.equal(r.status, 200)
  const h = await r.json()
  assert.match(h.status, /^(ok|degraded)$/)
  assert.ok(Array.isArray(h.cuda_path))

  r = await post(svc.url, JSON.stringify({ id: 'a1', type: 'echo', payload: { text: 'hello world' } }))
  assert.equal(r.status, 200)
  let j = await r.json()
  assert.deepEqual([j.ok, j.id, j.type, j.result], [true, 'a1', 'echo', { text: 'hello world' }])

  const bytes = Buffer.from([0, 1, 2, 0xfe, 0xff])
  r = await post(svc.url, JSON.stringify({ type: 'echo', payload_b64: bytes.toString('base64') }))
  j = await r.json()
  assert.equal(r.status, 200)
  assert.equal(j.encoding, 'raw')
  assert.deepEqual(Buffer.from(j.result_b64, 'base64'), bytes)

  const cases = [
    ['not json', 400, 'E_BAD_JSON'],
    [JSON.stringify({ type: 'echo' }), 400, 'E_ENVELOPE'],
    [JSON.stringify({ type: 'echo', payload_b64: 'a$$$' }), 400, 'E_BAD_BASE64'],
    [JSON.stringify({ type: 'no_such_type', payload: 1 }), 404, 'E_UNKNOWN_TYPE'],
    // Under --max-body (4096) but over the engine's maxEnvelopeBytes (1000).
    [JSON.stringify({ type: 'echo', payload: 'x'.repeat(2000) }), 413, 'E_TOO_LARGE'],
    // Over --max-body: refused before the engine sees it.
    [JSON.stringify({ type: 'echo', payload: 'x'.repeat(10000) }), 413, 'E_TOO_LARGE'],
  ]
  for (const [body, status, code] of cases) {
    r = await post(svc.url, body)
    j = await r.json()
    assert.equal(r.status, status, `${body.slice(0, 40)} -> ${JSON.stringify(j)}`)
    assert.equal(j.ok, false)
    assert.equal(j.error.code, code, body.slice(0, 40))
    assert.equal(typeof j.error.message, 'string')
  }

  r = await fetch(`${svc.url}/api/v2/nothing`)
  assert.equal(r.status, 404)
  r = await fetch(`${svc.url}/api/v1/submit`)
  assert.equal(r.status, 405)
  r = await post(svc.url, '{"type":"echo","payload":1}')
  assert.equal(r.status, 200, 'still serving after errors')

  r = await fetch(`${svc.url}/api/v1/submit?timeoutMs=abc`, { method: 'POST', body: '{}' })
  assert.equal(r.status, 400)

  assert.equal(await svc.stop(), 0, 'SIGTERM is a clean exit')
})

test('PORT and bad arguments', async (t) => {
  const bad = spawn(process.execPath, [BIN, '--port', 'x'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  bad.stderr.on('data', (d) => (err += d))
  const code = await new Promise((r) => bad.once('exit', r))
  assert.equal(code, 64)
  assert.match(err, /--port/)

  const svc = await startService([], { PORT: '0' })
  t.after(svc.stop)
  assert.match(svc.url, /^http:\/\/127\.0\.0\.1:\d+$/)
})

test('worker errors map to 503 / 504 when a worker is configured', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-service-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const sleeper = path.join(dir, 'sleeper.sh')
  fs.writeFileSync(sleeper, '#!/bin/sh\nsleep 100\n', { mode: 0o755 })
  const svc = await startService(['--options', JSON.stringify({ worker: { path: sleeper, timeoutMs: 300 } })])
  t.after(svc.stop)
  const h = await (await fetch(`${svc.url}/api/v1/health`)).json()
  assert.equal(h.worker.path, sleeper)
  let r = await post(svc.url, JSON.stringify({ type: 'custom_job', payload: {} }))
  let j = await r.json()
  assert.equal(r.status, 504, JSON.stringify(j))
  assert.equal(j.error.code, 'E_WORKER_TIMEOUT')

  const missing = await startService(['--options', JSON.stringify({ worker: { path: path.join(dir, 'gone') } })]).catch((e) => e)
  if (missing instanceof Error) {
    // Refusing to start with a missing worker is also acceptable behaviour.
    assert.match(missing.message, /E_WORKER_NOT_FOUND|gone/)
  } else {
    t.after(missing.stop)
    r = await post(missing.url, JSON.stringify({ type: 'custom_job', payload: {} }))
    j = await r.json()
    assert.equal(r.status, 503, JSON.stringify(j))
    assert.equal(j.error.code, 'E_WORKER_NOT_FOUND')
  }
})
