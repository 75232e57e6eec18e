// submit(): envelopes, echo, coded errors, cancellation, event-loop health.
import test from 'node:test'
import assert from 'node:assert/strict'
import { addon, rejection, b64 } from './helpers.mjs'

const { submit, Engine } = addon
const hello = JSON.stringify({ text: 'hello world' })

test('echo of payload_b64 JSON in every base64 flavour', async () => {
  const std = b64(hello)
  const flavours = {
    standard: std,
    urlsafe: Buffer.from(hello).toString('base64url'),
    unpadded: std.replace(/=+$/, ''),
    wrapped: std.match(/.{1,8}/g).join('\r\n'),
    spaced: ` ${std.slice(0, 5)} \t${std.slice(5)}\n`,
  }
  for (const [name, payload_b64] of Object.entries(flavours)) {
    const r = await submit({ type: 'echo', payload_b64 })
    assert.equal(r.ok, true, name)
    assert.equal(r.type, 'echo', name)
    assert.equal(r.encoding, 'json', name)
    assert.deepEqual(r.result, { text: 'hello world' }, name)
    assert.equal(typeof r.timings_ms.total, 'number')
  }
})

test('URL-safe alphabet characters decode (bytes that need - and _)', async () => {
  const bytes = Buffer.from([0xfb, 0xff, 0xfe, 0x3e, 0x3f])
  const r = await submit({ type: 'echo', payload_b64: bytes.toString('base64url') })
  assert.equal(r.encoding, 'raw')
  assert.ok(Buffer.isBuffer(r.result))
  assert.deepEqual([...r.result], [...bytes])
  const r2 = await submit({ type: 'echo', payload_b64: bytes.toString('base64') })
  assert.deepEqual([...r2.result], [...bytes])
})

test('payload_b64 of non-JSON bytes comes back as bytes with encoding raw', async () => {
  const bytes = Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255, 0x7b])
  const r = await submit({ type: 'echo', payload_b64: bytes.toString('base64') })
  assert.equal(r.encoding, 'raw')
  assert.ok(r.result instanceof Uint8Array)
  assert.deepEqual([...r.result], [...bytes])
  // Text that is not JSON is raw too.
  const t = await submit({ type: 'echo', payload_b64: b64('hello, not json') })
  assert.equal(t.encoding, 'raw')
  assert.equal(Buffer.from(t.result).toString(), 'hello, not json')
})

test('envelope as JSON string and as Uint8Array; id is echoed; key order kept', async () => {
  const env = { id: 'job-7', type: 'echo', payload: { z: 1, a: [1, 2, { b: null }], s: 'é😀' } }
  const fromString = await submit(JSON.stringify(env))
  assert.equal(fromString.id, 'job-7')
  assert.deepEqual(fromString.result, env.payload)
  assert.deepEqual(Object.keys(fromString.result), ['z', 'a', 's'])
  const fromBytes = await submit(new TextEncoder().encode(JSON.stringify(env)))
  assert.deepEqual(fromBytes.result, env.payload)
  const fromObject = await submit(env)
  assert.deepEqual(fromObject.result, env.payload)
  assert.equal((await submit({ id: 42, type: 'echo', payload: 1 })).id, '42')
})

test('explicit encodings: cbor and msgpack payloads are decoded; raw stays bytes', async () => {
  // {"a":1} in CBOR: a1 61 61 01; in MessagePack: 81 a1 61 01
  const cbor = await submit({ type: 'echo', encoding: 'cbor', payload_b64: Buffer.from([0xa1, 0x61, 0x61, 0x01]).toString('base64') })
  assert.deepEqual(cbor.result, { a: 1 })
  assert.equal(cbor.encoding, 'cbor')
  const mp = await submit({ type: 'echo', encoding: 'msgpack', payload_b64: Buffer.from([0x81, 0xa1, 0x61, 0x01]).toString('base64') })
  assert.deepEqual(mp.result, { a: 1 })
  const raw = await submit({ type: 'echo', encoding: 'raw', payload_b64: b64('{"a":1}') })
  assert.equal(Buffer.from(raw.result).toString(), '{"a":1}')
  const bytes = await submit({ type: 'echo', payload: Buffer.from([1, 2, 3]) })
  assert.deepEqual([...bytes.result], [1, 2, 3])
  const bad = await rejection(submit({ type: 'echo', encoding: 'cbor', payload_b64: b64('\xff\xff') }))
  assert.equal(bad.code, 'E_DECODE')
  assert.match(bad.message, /payload_b64.*CBOR/)
})

const badCases = [
  ['both payloads', { type: 'echo', payload: {}, payload_b64: b64('{}') }, 'E_ENVELOPE', /both `payload` and `payload_b64`/],
  ['neither payload', { type: 'echo' }, 'E_ENVELOPE', /neither `payload` nor `payload_b64`/],
  ['missing type', { payload: { x: 1 } }, 'E_ENVELOPE', /`type` is missing/],
  ['type not a string', { type: 5, payload: {} }, 'E_ENVELOPE', /`type` must be a string/],
  ['bad base64 char', { type: 'echo', payload_b64: 'eyJh$ZSI6MX0=' }, 'E_BAD_BASE64', /invalid character '\$' at offset 4/],
  ['bad base64 padding', { type: 'echo', payload_b64: 'eyJ=hIjoxfQ' }, 'E_BAD_BASE64', /padding.*offset 3/],
  ['base64 length', { type: 'echo', payload_b64: 'eyJhIjoxfQ=== ' }, 'E_BAD_BASE64', /payload_b64/],
  ['mixed alphabets', { type: 'echo', payload_b64: 'ab+c-d==' }, 'E_BAD_BASE64', /mixes the standard/],
  ['invalid JSON string', '{"type":"echo","payload":', 'E_BAD_JSON', /not valid JSON.*line 1 column/],
  ['JSON nested 10,000 deep', `{"type":"echo","payload":${'['.repeat(10000)}${']'.repeat(10000)}}`, 'E_TOO_DEEP', /nested deeper than 64/],
  ['non-object argument', 42, 'E_ENVELOPE', /envelope object, a JSON string or a Uint8Array; got a number/],
  ['array argument', [1, 2], 'E_ENVELOPE', /got an array/],
  ['null argument', null, 'E_ENVELOPE', /got null/],
  ['unknown type', { type: 'transmogrify', payload: {} }, 'E_UNKNOWN_TYPE', /unknown job type `transmogrify`/],
  ['bad encoding', { type: 'echo', encoding: 'utf16', payload_b64: 'AA==' }, 'E_ENVELOPE', /`encoding` must be one of/],
  ['NaN in payload', { type: 'echo', payload: { x: NaN } }, 'E_INVALID_ARG', /payload\.x/],
]

for (const [name, envelope, code, pattern] of badCases) {
  test(`rejects ${name} with ${code}`, async () => {
    const err = await rejection(submit(envelope))
    assert.ok(err instanceof Error)
    assert.equal(err.code, code, err.message)
    assert.match(err.message, pattern)
  })
}

test('an object payload nested 10,000 deep (and a cycle) is E_TOO_DEEP, not a crash', async () => {
  const deep = {}
  let cur = deep
  for (let i = 0; i < 10000; i++) cur = cur.a = {}
  const err = await rejection(submit({ type: 'echo', payload: deep }))
  assert.equal(err.code, 'E_TOO_DEEP')
  assert.match(err.message, /^`payload\.a\.a/)
  const cyclic = { name: 'loop' }
  cyclic.self = cyclic
  assert.equal((await rejection(submit({ type: 'echo', payload: cyclic }))).code, 'E_TOO_DEEP')
})

test('size limit is checked before parsing', async () => {
  const engine = await Engine.open({ maxEnvelopeBytes: 1024 })
  try {
    // Invalid JSON over the limit: E_TOO_LARGE proves the limit came first.
    const big = '{' + 'x'.repeat(4096)
    const err = await rejection(engine.submit(big))
    assert.equal(err.code, 'E_TOO_LARGE')
    assert.match(err.message, /limit is 1024 bytes/)
    const err2 = await rejection(engine.submit({ type: 'echo', payload_b64: '!'.repeat(2000) }))
    assert.equal(err2.code, 'E_TOO_LARGE')
    assert.match(err2.message, /payload_b64/)
    const err3 = await rejection(engine.submit({ type: 'echo', payload: { s: 'y'.repeat(2000) } }))
    assert.equal(err3.code, 'E_TOO_LARGE')
    const err4 = await rejection(engine.submit(Buffer.alloc(2000, 0x20)))
    assert.equal(err4.code, 'E_TOO_LARGE')
    // Under the limit still works on the same engine.
    assert.deepEqual((await engine.submit({ type: 'echo', payload: { ok: 1 } })).result, { ok: 1 })
  } finally {
    await engine.close()
  }
})

test('the default 16 MiB limit: a 17 MiB payload_b64 is rejected, a 1 MiB one echoes', async () => {
  const big = 'A'.repeat(17 * 1024 * 1024)
  assert.equal((await rejection(submit({ type: 'echo', payload_b64: big }))).code, 'E_TOO_LARGE')
  const bytes = Buffer.alloc(1024 * 1024, 7)
  const r = await submit({ type: 'echo', payload_b64: bytes.toString('base64') })
  assert.equal(r.result.length, bytes.length)
  assert.ok(Buffer.from(r.result).equals(bytes))
})

test('the process stays alive and serves after every kind of bad input', async () => {
  for (const [, envelope] of badCases) await rejection(submit(envelope))
  const r = await submit({ type: 'echo', payload: { still: 'alive' } })
  assert.deepEqual(r.result, { still: 'alive' })
})

test('call options are validated', async () => {
  const env = { type: 'echo', payload: 1 }
  assert.equal((await rejection(submit(env, { target: 'mars' }))).code, 'E_INVALID_ARG')
  assert.equal((await rejection(submit(env, { timeoutMs: -1 }))).code, 'E_INVALID_ARG')
  assert.equal((await rejection(submit(env, { signal: {} }))).code, 'E_INVALID_ARG')
  assert.equal((await rejection(submit(env, 'fast'))).code, 'E_INVALID_ARG')
  const w = await rejection(submit(env, { target: 'worker' }))
  assert.equal(w.code, 'E_WORKER_NOT_FOUND')
})

test('AbortSignal: already aborted and aborted later reject with E_CANCELLED', async () => {
  const ac = new AbortController()
  ac.abort()
  const err = await rejection(submit({ type: 'echo', payload: 1 }, { signal: ac.signal }))
  assert.equal(err.code, 'E_CANCELLED')
  // A signal reused for many calls must not accumulate listeners.
  const shared = new AbortController()
  let warned = false
  const onWarning = (w) => { if (w.name === 'MaxListenersExceededWarning') warned = true }
  process.on('warning', onWarning)
  for (let i = 0; i < 50; i++) await submit({ type: 'echo', payload: i }, { signal: shared.signal })
  await new Promise((r) => setImmediate(r))
  process.off('warning', onWarning)
  assert.equal(warned, false, 'listeners leaked on a reused AbortSignal')
})

test('the JS thread is never blocked: setInterval ticks during an await-submit loop', async () => {
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  const start = performance.now()
  let jobs = 0
  while (performance.now() - start < 300) {
    await submit({ type: 'echo', payload: { n: jobs } })
    jobs++
  }
  clearInterval(timer)
  assert.ok(jobs > 100, `only ${jobs} jobs ran`)
  assert.ok(ticks >= 50, `setInterval ticked only ${ticks} times in 300 ms while submit looped`)
})

test('Engine.open validates options; closed engines reject', async () => {
  for (const bad of [{ maxEnvelopeBytes: -5 }, { device: 'tpu' }, { maxJsonDepth: 'deep' }, 'x']) {
    const err = await rejection(Engine.open(bad))
    assert.equal(err.code, 'E_INVALID_ARG', JSON.stringify(bad))
  }
  const e = await Engine.open({ maxJsonDepth: 3 })
  assert.equal((await rejection(e.submit({ type: 'echo', payload: [[[[1]]]] }))).code, 'E_TOO_DEEP')
  assert.deepEqual((await e.submit({ type: 'echo', payload: [[[1]]] })).result, [[[1]]])
  await e.close()
  await e.close()
  const err = await rejection(e.submit({ type: 'echo', payload: 1 }))
  assert.equal(err.code, 'E_CLOSED')
  assert.match(err.message, /closed/)
  assert.equal((await e.health()).status, 'error')
})

test('ESM import works with named and default exports', async () => {
  const esm = await import('../index.mjs')
  assert.equal(typeof esm.submit, 'function')
  assert.equal(typeof esm.default.health, 'function')
  const r = await esm.submit({ type: 'echo', payload: 'esm' })
  assert.equal(r.result, 'esm')
})

test('abort and timeout while a large envelope is being decoded reject promptly', async (ctx) => {
  // Over the 16 MiB default: an engine that admits it.
  const engine = await Engine.open({ maxEnvelopeBytes: 64 * 1024 * 1024 })
  ctx.after(() => engine.close())
  const submit = engine.submit.bind(engine)
  const big = Buffer.alloc(40 * 1024 * 1024, 1).toString('base64')
  const ac = new AbortController()
  const t0 = performance.now()
  const p = submit({ type: 'echo', payload_b64: big }, { signal: ac.signal })
  ac.abort()
  const err = await rejection(p)
  assert.equal(err.code, 'E_CANCELLED')
  assert.ok(performance.now() - t0 < 1000)
  const t = await rejection(submit({ type: 'echo', payload_b64: big }, { timeoutMs: 1 }))
  assert.equal(t.code, 'E_TIMEOUT')
  assert.match(t.message, /timeoutMs = 1/)
  // Still serving.
  assert.equal((await submit({ type: 'echo', payload: 'next' })).result, 'next')
})
