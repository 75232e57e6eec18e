// bin/cuda-service.mjs: the real server in a child process, hit with fetch,
// http.request (to set Host/Origin freely) and raw `net` sockets (malformed,
// slow and abandoned requests). docs/reliability.md "HTTP service".
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'

import { BIN, sleep, cleanEnv, startService, until, post, request, raw, refusesConnections } from './service-helpers.mjs'

const echo = (text) => JSON.stringify({ type: 'echo', payload: { text } })

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

test('statuses come from the addon error table (errorCodes); unknown codes are 500', async () => {
  const { errorCodes } = createRequire(import.meta.url)('../index.js')
  const { statusFor } = await import(BIN)
  const table = errorCodes()
  assert.ok(table.length >= 20)
  for (const { code, http_status } of table) assert.equal(statusFor(code), http_status, code)
  assert.equal(statusFor('E_NOT_A_CODE'), 500)
  assert.equal(statusFor(undefined), 500)
})

test('PORT and bad arguments', async (t) => {
  const exit64 = async (args, env = {}) => {
    const bad = spawn(process.execPath, [BIN, ...args], { env: cleanEnv(env), stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 })
    let err = ''
    bad.stderr.on('data', (d) => (err += d))
    const code = await new Promise((r) => bad.once('exit', r))
    assert.equal(code, 64, `${args.join(' ')}: ${err}`)
    return err
  }
  const [svc, ...errs] = await Promise.all([
    startService([], { PORT: '0' }),
    exit64(['--port', 'x']),
    exit64(['--max-body', '100', '--max-body-total', '10']),
    exit64(['--headers-timeout', '2000', '--request-timeout', '1000']),
    exit64([], { CUDA_SERVICE_TOKEN: '  ' }),
    exit64(['--token-file', '/nonexistent/token']),
    exit64(['--allow-origin']),
  ])
  for (const [err, re] of errs.map((e, i) => [e, [/--port/, /--max-body-total/, /--headers-timeout/, /token/, /--token-file/, /--allow-origin needs a value/][i]])) assert.match(err, re)
  t.after(svc.stop)
  assert.match(svc.url, /^http:\/\/127\.0\.0\.1:\d+$/)
})

test('a malformed request target answers 400 and the process lives (raw socket)', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  for (const target of ['http://[', '//[', 'http://a:99999/', 'http://%/']) {
    // The reproducer from issue 10, byte for byte (Host: x included).
    const c = raw(svc, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    const { data, status } = await c.done
    assert.equal(status, 400, `${target}: ${JSON.stringify(data)}`)
    assert.equal(JSON.parse(data.slice(data.indexOf('{'))).error.code, 'E_INVALID_ARG')
    assert.equal(svc.child.exitCode, null, `${target} killed the service: ${svc.stderr()}`)
  }
  // What Node's parser rejects is answered as Node would (and logged): 400, 431.
  for (const [text, status] of [
    ['GARBAGE\r\n\r\n', 400],
    [`GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`, 431],
  ]) {
    const { data, status: got } = await raw(svc, text).done
    assert.equal(got, status, data)
  }
  const r = await fetch(`${svc.url}/api/v1/health`)
  assert.equal(r.status, 200)
  assert.equal(svc.child.exitCode, null)
  assert.ok(!svc.stderr().includes('E_INTERNAL'), svc.stderr())
  assert.ok(svc.logs().some((l) => l.status === 431 && l.client_error === 'HPE_HEADER_OVERFLOW'))
})

test('defaults: foreign Origin 403, non-JSON POST 415, foreign Host 403, no token needed', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const submit = { method: 'POST', path: '/api/v1/submit', body: echo('d') }
  assert.equal((await request(svc, { ...submit, headers: { 'content-type': 'application/json' } })).status, 200)
  // What any web page can send cross-site without a preflight.
  for (const headers of [{ 'content-type': 'text/plain' }, { 'content-type': 'application/x-www-form-urlencoded' }, {}]) {
    const r = await request(svc, { ...submit, headers })
    assert.equal(r.status, 415, JSON.stringify(headers))
  }
  let r = await request(svc, { ...submit, headers: { 'content-type': 'application/json', origin: 'https://any.example' } })
  assert.equal(r.status, 403, 'no origin is allowed by default')
  r = await request(svc, { headers: { host: 'rebound.example:8096' } })
  assert.equal(r.status, 403, 'DNS rebinding: a foreign Host on a loopback bind')
  assert.equal((await request(svc)).status, 200)
})

test('listen address: --host / CUDA_SERVICE_HOST, never HOST', async (t) => {
  const [a, b, c] = await Promise.all([
    startService([], { HOST: '0.0.0.0' }),
    startService([], { CUDA_SERVICE_HOST: '127.0.0.2', HOST: '0.0.0.0' }),
    startService(['--host', '127.0.0.3'], { CUDA_SERVICE_HOST: '127.0.0.2' }),
  ])
  t.after(() => Promise.all([a.stop(), b.stop(), c.stop()]))
  assert.match(a.url, /^http:\/\/127\.0\.0\.1:\d+$/, 'HOST is ignored')
  assert.match(b.url, /^http:\/\/127\.0\.0\.2:\d+$/)
  assert.equal((await fetch(`${b.url}/livez`)).status, 200, 'the bound address is an allowed Host')
  assert.match(c.url, /^http:\/\/127\.0\.0\.3:\d+$/, '--host wins over the variable')
})

test('Origin allow-list, JSON content type, Host allow-list, access log', async (t) => {
  const svc = await startService(['--allow-origin', 'http://app.example,http://b.example:3000', '--allow-host', 'api.internal'])
  t.after(svc.stop)
  const submit = { method: 'POST', path: '/api/v1/submit', body: echo('x') }
  const json = { 'content-type': 'application/json' }

  // Origin: none is fine (the :8096 callers send none); a foreign one is 403 on every route.
  assert.equal((await request(svc)).status, 200)
  for (const req of [{}, { ...submit, headers: json }, { path: '/livez' }]) {
    const r = await request(svc, { ...req, headers: { ...req.headers, origin: 'http://evil.example' } })
    assert.equal(r.status, 403, JSON.stringify(req))
    assert.equal(r.json.error.code, 'E_FORBIDDEN')
  }
  assert.equal((await request(svc, { headers: { origin: 'null' } })).status, 403)
  let r = await request(svc, { ...submit, headers: { ...json, origin: 'http://b.example:3000' } })
  assert.equal(r.status, 200, r.body)
  assert.equal(r.headers['access-control-allow-origin'], 'http://b.example:3000')
  r = await request(svc, { method: 'OPTIONS', path: '/api/v1/submit', headers: { origin: 'http://app.example', 'access-control-request-method': 'POST' } })
  assert.equal(r.status, 204)
  assert.match(r.headers['access-control-allow-headers'], /content-type/)

  // Content type: JSON (any parameters, any case) or 415, before the body is read.
  for (const [type, status] of [
    [undefined, 415],
    ['text/plain', 415],
    ['application/x-www-form-urlencoded', 415],
    ['multipart/form-data; boundary=x', 415],
    ['application/jsonp', 415],
    ['application/json', 200],
    ['Application/JSON; charset=utf-8', 200],
  ]) {
    r = await request(svc, { ...submit, headers: type ? { 'content-type': type } : {} })
    assert.equal(r.status, status, `${type}: ${r.body}`)
    if (status === 415) assert.equal(r.json.error.code, 'E_UNSUPPORTED_MEDIA_TYPE')
  }

  // Host (bound to loopback): the loopback names, with or without a port, and --allow-host.
  for (const host of ['localhost', 'localhost:1', '127.0.0.1', `127.0.0.1:${svc.port}`, '[::1]', '[::1]:8096', 'LOCALHOST', 'api.internal:80']) {
    r = await request(svc, { headers: { host } })
    assert.equal(r.status, 200, `${host}: ${r.body}`)
  }
  for (const host of ['evil.example', `evil.example:${svc.port}`, 'localhost.evil.example', '127.0.0.1.nip.io', '[::1', 'api.internal.evil']) {
    r = await request(svc, { headers: { host } })
    assert.equal(r.status, 403, `${host}: ${r.body}`)
    assert.equal(r.json.error.code, 'E_FORBIDDEN')
  }

  // One JSON line per request on stderr: method, path, status, ms, code.
  const before = svc.logs().filter((l) => l.path === '/livez').length
  for (let i = 0; i < 3; i++) await request(svc, { path: '/livez?x=1' })
  await request(svc, { path: '/nope' })
  await until(() => svc.logs().some((l) => l.path === '/nope'), 2000, 'the log line')
  const livez = svc.logs().filter((l) => l.path === '/livez')
  assert.equal(livez.length - before, 3)
  assert.deepEqual(Object.keys(livez.at(-1)).sort(), ['bytes', 'code', 'method', 'ms', 'path', 'route', 'status', 'time'])
  assert.deepEqual([livez.at(-1).method, livez.at(-1).status, livez.at(-1).code], ['GET', 200, null])
  assert.equal(typeof livez.at(-1).ms, 'number')
  const nope = svc.logs().find((l) => l.path === '/nope')
  assert.deepEqual([nope.status, nope.code], [404, 'E_INVALID_ARG'])
})

test('bearer token (CUDA_SERVICE_TOKEN / --token-file), --allow-any-content-type, CUDA_SERVICE_LOG=0', async (t) => {
  const svc = await startService(['--allow-any-content-type'], { CUDA_SERVICE_TOKEN: 's3cret-token', CUDA_SERVICE_LOG: '0', CUDA_SERVICE_ALLOW_ORIGINS: 'http://env.example' })
  t.after(svc.stop)
  let r = await request(svc)
  assert.equal(r.status, 401)
  assert.equal(r.json.error.code, 'E_UNAUTHORIZED')
  assert.match(r.headers['www-authenticate'], /^Bearer /)
  for (const authorization of ['Bearer wrong', 'Bearer s3cret-toke', 'Bearer s3cret-token2', 'Basic czNjcmV0LXRva2Vu', 's3cret-token']) {
    r = await request(svc, { headers: { authorization } })
    assert.equal(r.status, 401, authorization)
    assert.match(r.headers['www-authenticate'], /^Bearer/)
  }
  r = await request(svc, { headers: { authorization: 'bearer s3cret-token' } })
  assert.equal(r.status, 200)
  r = await request(svc, { method: 'POST', path: '/api/v1/submit', body: echo('t'), headers: { authorization: 'Bearer s3cret-token' } })
  assert.equal(r.status, 200, r.body)
  r = await request(svc, { method: 'POST', path: '/api/v1/submit', body: echo('t'), headers: { 'content-type': 'text/plain', authorization: 'Bearer s3cret-token' } })
  assert.equal(r.status, 200, '--allow-any-content-type keeps the old behaviour')
  r = await request(svc, { method: 'POST', path: '/api/v1/submit', body: echo('t') })
  assert.equal(r.status, 401, 'submit needs the token too')
  // The liveness probe never needs it.
  r = await request(svc, { path: '/livez' })
  assert.deepEqual([r.status, r.json], [200, { status: 'ok' }])
  // CUDA_SERVICE_ALLOW_ORIGINS is the list's variable.
  r = await request(svc, { headers: { origin: 'http://env.example', authorization: 'Bearer s3cret-token' } })
  assert.equal(r.status, 200)
  await sleep(50)
  assert.deepEqual(svc.logs(), [], 'CUDA_SERVICE_LOG=0: no access log')

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-service-token-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, 'token'), 'file-token\n', { mode: 0o600 })
  const f = await startService(['--token-file', path.join(dir, 'token')], { CUDA_SERVICE_TOKEN: 's3cret-token' })
  t.after(f.stop)
  assert.equal((await request(f, { headers: { authorization: 'Bearer file-token' } })).status, 200)
  assert.equal((await request(f, { headers: { authorization: 'Bearer s3cret-token' } })).status, 401, 'the file wins')
})

test('body limits: 413 before reading, stalled bodies time out, aborted bodies are released and logged as aborts', async (t) => {
  const svc = await startService(['--max-body', '1000000', '--max-body-total', '1500000', '--body-timeout', '400'])
  t.after(svc.stop)
  const head = (len, extra = '') => `POST /api/v1/submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\n${extra}\r\n`

  // Content-Length over --max-body: 413 with no body byte sent.
  let c = raw(svc, head(2_000_000))
  await until(() => c.data().includes('\r\n\r\n{'), 2000, 'the 413')
  assert.match(c.data(), /^HTTP\/1\.1 413 /)
  assert.match(c.data(), /E_TOO_LARGE/)
  c.sock.destroy()

  // A stalled body: 408 after --body-timeout, then the connection is dropped.
  c = raw(svc, `${head(100)}{"type":`)
  let done = await c.done
  assert.equal(done.status, 408, done.data)
  assert.match(done.data, /E_REQUEST_TIMEOUT/)
  assert.ok(done.ms >= 350 && done.ms < 3000, `closed after ${done.ms} ms`)

  // --max-body-total: two 1 MB bodies cannot be in memory at once (1.5 MB budget).
  const a = raw(svc, head(1_000_000, 'Expect: 100-continue\r\n'))
  await until(() => a.data().startsWith('HTTP/1.1 100'), 2000, '100 Continue') // A's request is being read
  a.sock.write('{"type":"echo","payload":"')
  const feed = setInterval(() => a.sock.write('x'.repeat(1000)), 100) // keeps A under the body timeout
  const b = raw(svc, head(1_000_000))
  const bDone = await b.done
  assert.equal(bDone.status, 503, bDone.data)
  assert.match(bDone.data, /E_OVERLOADED/)
  // A goes away mid-body: its bytes are released, and its log line says so.
  clearInterval(feed)
  a.sock.destroy()
  await until(() => svc.logs().some((l) => l.aborted), 2000, 'the abort log line')
  const abort = svc.logs().find((l) => l.aborted)
  assert.deepEqual([abort.method, abort.path, abort.status, abort.code], ['POST', '/api/v1/submit', 499, 'E_CANCELLED'])
  const big = JSON.stringify({ type: 'echo', payload: 'y'.repeat(999_000) })
  const r = await post(svc.url, big)
  assert.equal(r.status, 200, 'the budget was given back')
  assert.equal((await r.json()).result.length, 999_000)
  assert.ok(!svc.stderr().includes('E_INTERNAL'), svc.stderr())
  assert.equal(svc.child.exitCode, null)
})

test('memory held by abandoned uploads is given back', async (t) => {
  // 40 MB bodies: over the default --max-body (17 MiB), so raise it.
  const svc = await startService(['--max-body', String(41 << 20)])
  t.after(svc.stop)
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${svc.child.pid}/status`, 'utf8'))[1]) * 1024
  await fetch(`${svc.url}/livez`)
  const base = rss()
  const MB = 1 << 20
  const chunk = Buffer.alloc(MB, 120)
  const uploads = []
  for (let i = 0; i < 4; i++) {
    const c = raw(svc, `POST /api/v1/submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${40 * MB}\r\n\r\n`)
    for (let j = 0; j < 39; j++) c.sock.write(chunk)
    uploads.push(c)
  }
  await until(() => rss() > base + 120 * MB, 5000, `the uploads to be buffered (rss ${rss() >> 20} MB)`)
  for (const c of uploads) c.sock.destroy()
  await until(() => rss() < base + 40 * MB, 5000, `RSS back near ${base >> 20} MB (now ${rss() >> 20} MB)`)
  await until(() => svc.logs().filter((l) => l.aborted).length === 4, 2000, 'four abort log lines')
  assert.equal((await fetch(`${svc.url}/livez`)).status, 200)
})

test('idle, slow-header, never-ending chunked and keep-alive connections are closed within the timeouts', async (t) => {
  const svc = await startService(['--headers-timeout', '300', '--request-timeout', '800', '--body-timeout', '5000', '--keep-alive-timeout', '300'])
  t.after(svc.stop)
  const idle = raw(svc)
  const slow = raw(svc, 'GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n')
  const slowFeed = setInterval(() => slow.sock.write('X-Slow: 1\r\n'), 50)
  const chunked = raw(svc, 'POST /api/v1/submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
  const chunkFeed = setInterval(() => chunked.sock.write('1\r\n \r\n'), 50)
  const ka = raw(svc, 'GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n')
  const [i, s, c, k] = await Promise.all([idle.done, slow.done, chunked.done, ka.done])
  clearInterval(slowFeed)
  clearInterval(chunkFeed)
  assert.ok(i.ms < 1500, `idle connection closed after ${i.ms} ms`)
  assert.ok(s.ms < 1500, `slow headers closed after ${s.ms} ms`)
  assert.equal(s.status, 408)
  assert.ok(c.ms >= 700 && c.ms < 2500, `never-ending chunked body closed after ${c.ms} ms`)
  assert.equal(c.status, 408, c.data)
  assert.equal(k.status, 200)
  assert.ok(k.ms < 1500, `idle keep-alive connection closed after ${k.ms} ms`)
  assert.equal((await fetch(`${svc.url}/livez`)).status, 200)
  assert.ok(!svc.stderr().includes('E_INTERNAL'), svc.stderr())
})

test('--max-connections caps open connections', async (t) => {
  const svc = await startService(['--max-connections', '4'])
  t.after(svc.stop)
  const held = []
  for (let i = 0; i < 4; i++) {
    const c = raw(svc)
    await new Promise((r) => c.sock.once('connect', r))
    held.push(c)
  }
  await sleep(50)
  const extra = raw(svc, 'GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n')
  const e = await extra.done
  assert.equal(e.data, '', 'the connection over the cap is dropped unanswered')
  assert.ok(held.every((c) => !c.sock.destroyed), 'the first four stay open')
  for (const c of held) c.sock.destroy()
  await Promise.all(held.map((c) => c.done))
  let status
  for (let i = 0; i < 50 && status !== 200; i++) {
    status = await fetch(`${svc.url}/livez`).then((r) => r.status, () => null)
    if (status !== 200) await sleep(20)
  }
  assert.equal(status, 200, 'a slot is free again once they close')
})

test('SIGTERM: stop accepting, finish the in-flight request, exit 0', async (t) => {
  const svc = await startService()
  t.after(svc.stop)
  const body = echo('in flight')
  const a = raw(svc, `POST /api/v1/submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`)
  await until(() => a.data().startsWith('HTTP/1.1 100'), 2000, '100 Continue')
  a.sock.write(body.slice(0, 10))
  const exited = new Promise((r) => svc.child.once('exit', (code) => r(code)))
  svc.child.kill('SIGTERM')
  // New connections are refused once the listener is closed.
  assert.ok(await refusesConnections(svc), 'new connections are refused after SIGTERM')
  assert.equal(svc.child.exitCode, null, 'still running while a request is in flight')
  a.sock.write(body.slice(10))
  const done = await a.done
  const reply = done.data.slice(done.data.lastIndexOf('HTTP/1.1'))
  assert.match(reply, /^HTTP\/1\.1 200 /)
  assert.match(reply, /connection: close/i)
  assert.deepEqual(JSON.parse(reply.slice(reply.indexOf('{'))).result, { text: 'in flight' })
  assert.equal(await exited, 0)
  assert.ok(svc.logs().some((l) => l.event === 'shutdown' && l.signal === 'SIGTERM'))
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
