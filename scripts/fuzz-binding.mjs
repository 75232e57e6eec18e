#!/usr/bin/env node
// JS-level fuzzing of the binding (docs/reliability.md, "Fuzzing").
//
//   node scripts/fuzz-binding.mjs [--n N] [--seed S] [--concurrency C] [--only I] [--start I] [--heavy] [--json]
//
// --heavy adds inputs that fit the default limits but take seconds each
// (1e7/6e7-hole arrays, 5 MB strings).
//
// Generates N inputs from the seed: values of every JS type (throwing
// getters, Proxies with throwing traps, revoked Proxies, Symbols, BigInts,
// cyclic objects, giant sparse arrays and lying `length`s, NaN/±Infinity/-0/
// huge numbers, lone surrogates, NUL and `__proto__` keys, typed arrays of
// every kind (detached and out-of-bounds too), functions, Dates, Maps, deep
// nesting), used as the arguments and options of every async export:
// submit, embed, infer, health, models (module-level and on an engine),
// Engine.open and engine.close. The inputs run in a child process, so a
// native crash (abort, segfault, stack overflow) is seen: the parent reports
// the seed, the inputs in flight and how to replay one (`--only I`).
//
// Checks, per call: no synchronous throw; the export returns a Promise; it
// settles (exactly once: counted); a rejection is an object with a `.code`
// from errorCodes(), never E_INTERNAL. Ordinary calls mixed in (echo submits,
// an embed, a text infer) must keep returning the right values. Sync exports
// (errorCodes, optionNames, findCudaWorkerPath, discoveryCandidates; their
// options, `{ baseDir }` of every type, throwing getters) may throw, but only
// coded errors from errorCodes(), never E_INTERNAL, and an E_INVALID_ARG
// names the field (`options…`).
//
// Exit 0 when every check held; 1 otherwise (the report says which).
// Needs the built addon (npx napi build --platform --release) and the test
// model (bash scripts/fetch-model.sh).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const HEAVY = process.argv.includes('--heavy') || process.env.FUZZ_BINDING_HEAVY === '1'
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

function parseArgs(argv) {
  const a = { n: 10000, seed: Date.now() % 1e9, concurrency: 64, only: null, start: 0, child: false, json: false, progress: null }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    const v = () => argv[++i]
    if (k === '--n') a.n = Number(v())
    else if (k === '--seed') a.seed = Number(v())
    else if (k === '--concurrency') a.concurrency = Number(v())
    else if (k === '--only') a.only = Number(v())
    else if (k === '--start') a.start = Number(v())
    else if (k === '--child') a.child = true
    else if (k === '--json') a.json = true
    else if (k === '--heavy') a.heavy = true
    else if (k === '--progress') a.progress = v()
    else {
      console.error('usage: node scripts/fuzz-binding.mjs [--n N] [--seed S] [--concurrency C] [--only I] [--start I] [--heavy] [--json]')
      process.exit(64)
    }
  }
  return a
}

// ---- deterministic generation ----------------------------------------------

function rngFor(seed, i) {
  // mulberry32 over a mix of the seed and the input index.
  let s = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const r = {
    f: next,
    int: (n) => Math.floor(next() * n),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  }
  return r
}

const NUMBERS = [0, -0, 1, -1, 0.5, NaN, Infinity, -Infinity, 1e300, -1e300, 1e-300, 5e-324, Number.MAX_VALUE,
  Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, -Number.MAX_SAFE_INTEGER, 2 ** 31, -(2 ** 31), 2 ** 32 - 1,
  2 ** 32, 2 ** 53, 2 ** 64, 1e21, 123.456, 124968.07868592441, 65504, 65505, 255, 256, -129, 86400000, 86400001]
const BIGINTS = [0n, 1n, -1n, 2n ** 63n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 64n, -(2n ** 64n), 2n ** 1000n]
const STRINGS = ['', 'a', 'hello world', 'echo', 'embedding', 'embed', 'inference', 'infer', 'raw', 'json', 'cbor',
  'msgpack', 'auto', 'local', 'worker', 'cpu', 'cuda', 'fp16', 'bf16', 'fp32', 'BYTES', 'INT64', 'FP32', 'text',
  'input_ids', 'attention_mask', 'token_type_ids', 'sentence_embedding', 'last_hidden_state', '__proto__',
  'constructor', 'toString', 'a\0b', '\0', '\ud800', '\udc00x', 'x\ud83d', '\ud83d\ude00', 'é', '\u2028', '\ufeff',
  'eyJhIjoxfQ==', 'eyJhIjoxfQ', 'e30=', '%%%', '{"type":"echo","payload":1}', '{"a":', '[[[[', 'null', '-0', '1e400',
  '0x10', ' ', '\n', 'NaN', 'Infinity', 'E_INTERNAL', 'all-MiniLM-L6-v2', './models/all-MiniLM-L6-v2', '/nonexistent',
  'maxEnvelopBytes', 'timeoutMS', 'signal', 'payload', 'payload_b64', 'type', 'id', 'encoding', 'drainMs']
const KEYS = ['type', 'payload', 'payload_b64', 'id', 'encoding', 'signal', 'timeoutMs', 'target', 'normalize',
  'truncate', 'drainMs', 'inputs', 'outputs', 'name', 'shape', 'datatype', 'data', 'parameters', 'model_name',
  'model', 'device', 'dtype', 'threads', 'worker', 'baseDir', 'maxEnvelopeBytes', 'maxJsonDepth', 'maxInFlight',
  'maxBatchTokens', 'maxBatchSize', 'maxQueuedTexts', 'maxTextsPerCall', 'path', 'mode', 'args', 'poolSize',
  'binaryFormat', 'reapOrphans', 'maxOutputBytes', 'maxStderrBytes', 'discover', 'isolation',
  '__proto__', 'constructor', 'a\0', '', '0', '4294967295', 'length', 'then', 'toJSON', 'valueOf']
const TYPED = ['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array',
  'Uint32Array', 'Float32Array', 'Float64Array', 'BigInt64Array', 'BigUint64Array', 'Float16Array']
  .filter((n) => typeof globalThis[n] === 'function')

const thrower = (r) => {
  const what = r.pick(['error', 'number', 'symbol', 'null', 'coded', 'undefined'])
  return () => {
    if (what === 'error') throw new Error('fuzz getter')
    if (what === 'number') throw 1
    if (what === 'symbol') throw Symbol('fuzz')
    if (what === 'null') throw null
    if (what === 'coded') throw Object.assign(new Error('fake'), { code: 'E_FAKE' })
    throw undefined
  }
}

function genString(r) {
  switch (r.int(6)) {
    case 0: {
      let s = ''
      const n = r.int(40)
      for (let i = 0; i < n; i++) s += String.fromCharCode(r.chance(0.2) ? r.int(0x10000) : 32 + r.int(95))
      return s
    }
    case 1:
      return r.pick(STRINGS).repeat(1 + r.int(4))
    case 2:
      return r.chance(0.02) ? 'x'.repeat(r.pick(HEAVY ? [1e5, 1e6, 5e6] : [1e4, 1e5])) : 'word '.repeat(r.int(300))
    default:
      return r.pick(STRINGS)
  }
}

function genTyped(r) {
  const name = r.pick(TYPED)
  const C = globalThis[name]
  const n = r.pick([0, 1, 3, 8, 16, 100])
  let ta
  const kind = r.int(6)
  if (kind === 0 && typeof ArrayBuffer.prototype.transfer === 'function') {
    ta = new C(n)
    ta.buffer.transfer() // detached
  } else if (kind === 1) {
    const ab = new ArrayBuffer(64, { maxByteLength: 128 })
    ta = new C(ab, C.BYTES_PER_ELEMENT * r.int(4)) // length-tracking
    if (ab.resizable) ab.resize(r.int(2) * C.BYTES_PER_ELEMENT) // shrink: out of bounds or empty
  } else if (kind === 2) {
    const ab = new ArrayBuffer(C.BYTES_PER_ELEMENT * (n + 4))
    ta = new C(ab, C.BYTES_PER_ELEMENT * 2, n) // offset view
  } else if (kind === 3 && typeof SharedArrayBuffer === 'function') {
    ta = new C(new SharedArrayBuffer(C.BYTES_PER_ELEMENT * n))
  } else {
    ta = new C(n)
  }
  try {
    for (let i = 0; i < Math.min(ta.length, 16); i++) {
      ta[i] = name.startsWith('Big') ? r.pick(BIGINTS) : r.pick(NUMBERS)
    }
  } catch {}
  return ta
}

function genArray(r, depth) {
  switch (r.int(10)) {
    case 0:
      // 1e7 / 6e7 holes fit the default limits and take seconds to walk: only with --heavy.
      return new Array(HEAVY && r.chance(0.02) ? r.pick([1e7, 6e7]) : r.pick([2 ** 32 - 1, 2 ** 31, 2 ** 24, 16385, 65537]))
    case 1: {
      const a = [1, 2, 3]
      Object.defineProperty(a, 0, { get: thrower(r), enumerable: true })
      return a
    }
    case 2:
      return new Proxy([1, 2], { get: (t, k) => (k === 'length' ? r.pick([2 ** 32 - 1, -1, NaN, 1e9]) : t[k]) })
    case 3:
      return { length: r.pick([2 ** 32 - 1, 3, -1, NaN, Infinity]), 0: 'a', 1: 'b' }
    case 4: {
      const a = []
      a[r.pick([5, 1000, 2 ** 20])] = 'x' // holes
      return a
    }
    default: {
      const n = r.int(6)
      const a = []
      for (let i = 0; i < n; i++) a.push(genValue(r, depth + 1))
      if (r.chance(0.1)) a.push(a) // cyclic
      return a
    }
  }
}

function deep(r) {
  const d = r.pick([63, 64, 65, 200, 1000, 15000, 100000])
  let v = r.chance(0.5) ? 1 : 'x'
  const arr = r.chance(0.5)
  for (let i = 0; i < d; i++) v = arr ? [v] : { a: v }
  return v
}

function genObject(r, depth) {
  switch (r.int(14)) {
    case 0: {
      const o = { a: 1 }
      Object.defineProperty(o, r.pick(KEYS), { get: thrower(r), enumerable: true })
      return o
    }
    case 1: {
      const target = r.chance(0.5) ? {} : []
      const trap = r.pick(['get', 'ownKeys', 'getOwnPropertyDescriptor', 'has', 'getPrototypeOf'])
      return new Proxy(target, { [trap]: thrower(r) })
    }
    case 2: {
      const { proxy, revoke } = Proxy.revocable({ type: 'echo', payload: 1 }, {})
      revoke()
      return proxy
    }
    case 3: {
      const o = { type: 'echo' }
      o.payload = o // cyclic
      o.self = o
      return o
    }
    case 4:
      return JSON.parse('{"__proto__":{"admin":true},"a\\u0000":1,"":2}')
    case 5:
      return r.pick([new Date(), new Date(NaN), new Map([[1, 2]]), new Set([1]), /re/g, new Error('e'),
        Promise.resolve(1), new String('s'), new Number(1), new Boolean(false), new WeakMap(), new ArrayBuffer(8),
        new DataView(new ArrayBuffer(4)), Buffer.from('{"type":"echo","payload":1}')])
    case 6: {
      const o = Object.create(null)
      o.type = 'echo'
      o.payload = genValue(r, depth + 1)
      return o
    }
    case 7:
      return { toJSON: thrower(r), valueOf: thrower(r), toString: thrower(r), [Symbol.toPrimitive]: thrower(r) }
    case 8:
      return deep(r)
    case 9: {
      // getters that answer differently each time
      let n = 0
      return { get type() { return n++ % 2 ? 'echo' : 7 }, get payload() { return n++ % 2 ? 1 : undefined } }
    }
    case 10:
      return { [Symbol('k')]: 1, [r.pick(KEYS)]: Symbol('v') }
    default: {
      const o = {}
      const n = r.int(5)
      for (let i = 0; i < n; i++) {
        const k = r.chance(0.5) ? r.pick(KEYS) : genString(r)
        const v = genValue(r, depth + 1)
        try {
          o[k] = v // `__proto__` sets the prototype (a Proxy or a revoked one, too)
        } catch {}
      }
      return o
    }
  }
}

function genValue(r, depth = 0) {
  if (depth > 4) return r.pick([1, 'x', null, true])
  switch (r.int(12)) {
    case 0:
      return r.pick([undefined, null, true, false])
    case 1:
    case 2:
      return r.chance(0.7) ? r.pick(NUMBERS) : (r.f() - 0.5) * 10 ** r.int(30)
    case 3:
      return r.pick(BIGINTS)
    case 4:
    case 5:
      return genString(r)
    case 6:
      return r.pick([Symbol(), Symbol.iterator, Symbol.for('x')])
    case 7:
      return r.pick([() => 1, function named() {}, class K {}, async () => 1, Object.assign(() => 1, { type: 'echo' })])
    case 8:
      return genTyped(r)
    case 9:
      return genArray(r, depth)
    default:
      return genObject(r, depth)
  }
}

function genSignal(r) {
  switch (r.int(8)) {
    case 0: {
      const c = new AbortController()
      c.abort(r.pick([undefined, 'why', new Error('x')]))
      return c.signal
    }
    case 1: {
      const c = new AbortController()
      setTimeout(() => c.abort(), r.int(5))
      return c.signal
    }
    case 2:
      return { aborted: false, addEventListener() {}, removeEventListener: thrower(r) }
    case 3:
      return { get aborted() { throw new Error('aborted getter') } }
    case 4:
      return { aborted: false }
    case 5:
      return AbortSignal.timeout(r.int(3))
    case 6:
      return new Proxy({}, { get: thrower(r) })
    default:
      return genValue(r, 2)
  }
}

function genCallOpts(r, extra = []) {
  switch (r.int(5)) {
    case 0:
      return undefined
    case 1:
      return genValue(r, 1)
    default: {
      const o = {}
      if (r.chance(0.4)) o.signal = genSignal(r)
      if (r.chance(0.4)) o.timeoutMs = r.chance(0.5) ? r.pick(NUMBERS) : genValue(r, 2)
      if (r.chance(0.3)) o.target = r.chance(0.7) ? r.pick(['auto', 'local', 'worker']) : genValue(r, 2)
      for (const k of extra) if (r.chance(0.3)) o[k] = r.chance(0.6) ? r.pick([true, false]) : genValue(r, 2)
      if (r.chance(0.1)) o[r.pick(KEYS)] = genValue(r, 2)
      return o
    }
  }
}

const JOB_TYPES = ['echo', 'embedding', 'embed', 'inference', 'infer', 'custom', '', ' ']

function genEnvelope(r) {
  switch (r.int(8)) {
    case 0:
      return genValue(r)
    case 1:
      return JSON.stringify({ type: r.pick(JOB_TYPES), payload: safeJson(genValue(r, 1)) }) ?? 'null'
    case 2: {
      const s = JSON.stringify({ type: r.pick(JOB_TYPES), payload: safeJson(genValue(r, 1)) }) ?? '{}'
      return new TextEncoder().encode(r.chance(0.2) ? s.slice(0, r.int(s.length + 1)) : s)
    }
    case 3: {
      const bytes = r.chance(0.5) ? Buffer.from(JSON.stringify(safeJson(genValue(r, 1)) ?? 1)) : Buffer.from(genTypedBytes(r))
      const b64 = bytes.toString(r.chance(0.5) ? 'base64' : 'base64url')
      return { type: r.pick(JOB_TYPES), payload_b64: r.chance(0.8) ? b64 : genString(r),
        encoding: r.chance(0.5) ? undefined : r.pick(['json', 'raw', 'cbor', 'msgpack', 'xml', genValue(r, 2)]) }
    }
    default: {
      const env = { type: r.chance(0.85) ? r.pick(JOB_TYPES) : genValue(r, 2) }
      if (r.chance(0.9)) env.payload = typePayload(r, env.type)
      if (r.chance(0.1)) env.payload_b64 = genString(r)
      if (r.chance(0.2)) env.id = r.chance(0.5) ? genString(r) : genValue(r, 2)
      if (r.chance(0.1)) env.encoding = genValue(r, 2)
      return env
    }
  }
}

function genTypedBytes(r) {
  const n = r.int(32)
  const b = new Uint8Array(n)
  for (let i = 0; i < n; i++) b[i] = r.int(256)
  return b
}

function safeJson(v) {
  try {
    // (a giant sparse array would make a 300 MB string here: keep its length)
    const rep = (k, x) => (typeof x === 'bigint' ? String(x) : Array.isArray(x) && x.length > 1e5 ? x.length : x)
    return JSON.parse(JSON.stringify(v, rep) ?? 'null')
  } catch {
    return null
  }
}

function typePayload(r, type) {
  if (type === 'embedding' || type === 'embed') {
    return r.chance(0.6) ? { texts: r.chance(0.7) ? [genString(r), genString(r)] : genValue(r, 1) } : genValue(r)
  }
  if (type === 'inference' || type === 'infer') return r.chance(0.7) ? genInferReq(r) : genValue(r)
  return genValue(r)
}

const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32',
  'FP64', 'BYTES']

function genInferReq(r) {
  if (r.chance(0.1)) return genValue(r)
  const n = r.int(3) + (r.chance(0.8) ? 1 : 0)
  const inputs = []
  for (let i = 0; i < n; i++) {
    const name = r.chance(0.8) ? r.pick(['text', 'input_ids', 'attention_mask', 'token_type_ids']) : genValue(r, 2)
    const datatype = r.chance(0.85)
      ? name === 'text' && r.chance(0.7) ? 'BYTES' : r.pick(DATATYPES)
      : genValue(r, 2)
    let data
    switch (r.int(6)) {
      case 0:
        data = genTyped(r)
        break
      case 1:
        data = genArray(r, 1)
        break
      case 2:
        data = name === 'text' ? [genString(r), genString(r)] : [[101, 7592, 102]]
        break
      case 3:
        data = new Array(2 ** 32 - 1)
        break
      case 4:
        data = [[1n, 2n], [3, 4.5], [true, 'x']]
        break
      default:
        data = genValue(r, 1)
    }
    const shape = r.chance(0.7)
      ? [r.pick([1, 2, 3, 0, 2 ** 32, -1, 1.5, NaN])].concat(r.chance(0.5) ? [r.pick([1, 2, 3, 2 ** 53])] : [])
      : genValue(r, 2)
    const t = { name, shape, datatype, data }
    if (r.chance(0.1)) t.parameters = genValue(r, 2)
    inputs.push(r.chance(0.95) ? t : genValue(r, 1))
  }
  const req = { inputs }
  if (r.chance(0.2)) req.outputs = r.chance(0.7) ? [{ name: r.pick(['sentence_embedding', 'last_hidden_state', 'x']) }] : genValue(r, 2)
  if (r.chance(0.2)) req.parameters = r.chance(0.5) ? { normalize: genValue(r, 3), truncate: genValue(r, 3) } : genValue(r, 2)
  if (r.chance(0.1)) req.model_name = r.chance(0.5) ? 'all-MiniLM-L6-v2' : genValue(r, 2)
  if (r.chance(0.1)) req.id = genValue(r, 2)
  return req
}

function genEngineOpts(r) {
  if (r.chance(0.3)) return genValue(r)
  const o = { device: 'cpu' }
  const n = 1 + r.int(3)
  for (let i = 0; i < n; i++) {
    const k = r.pick(['model', 'device', 'dtype', 'threads', 'worker', 'baseDir', 'maxEnvelopeBytes', 'maxJsonDepth',
      'maxInFlight', 'maxBatchTokens', 'maxBatchSize', 'maxQueuedTexts', 'maxTextsPerCall', 'maxEnvelopBytes', 'isolation'])
    o[k] = r.chance(0.6) ? r.pick(NUMBERS.concat(STRINGS.slice(0, 30), [true, false, null])) : genValue(r, 1)
  }
  // A valid option set loads the model (slow): keep most of them invalid.
  if (!r.chance(0.05)) o[r.pick(['threads', 'maxInFlight', 'model'])] = r.pick([NaN, -1, Symbol('s'), 1e300, {}, '/nonexistent'])
  return o
}

// What input i is: [export, args builder]. Describing an input = its index
// (regenerated from the seed) plus this label.
const EXPORTS = [
  ['submit', 300], ['engine.submit', 100], ['embed', 120], ['engine.embed', 40], ['infer', 120], ['engine.infer', 40],
  ['health', 30], ['engine.health', 20], ['models', 20], ['engine.models', 10], ['Engine.open', 2], ['engine.close', 1],
  ['sync', 30],
]
const TOTAL_WEIGHT = EXPORTS.reduce((s, [, w]) => s + w, 0)

function genInput(seed, i) {
  const r = rngFor(seed, i)
  let x = r.int(TOTAL_WEIGHT)
  let fn = EXPORTS[0][0]
  for (const [name, w] of EXPORTS) {
    if (x < w) {
      fn = name
      break
    }
    x -= w
  }
  let args
  try {
    args = genArgs(r, fn)
  } catch (e) {
    args = [`generator threw: ${e}`]
  }
  if (r.chance(0.05)) args.push(genValue(r, 1)) // an extra argument
  return { i, fn, args }
}

function genArgs(r, fn) {
  let args
  switch (fn) {
    case 'submit':
    case 'engine.submit':
      args = [genEnvelope(r), genCallOpts(r)]
      break
    case 'embed':
    case 'engine.embed':
      args = [r.chance(0.4) ? genString(r) : r.chance(0.5) ? [genString(r), genValue(r, 2)] : genValue(r),
        genCallOpts(r, ['normalize', 'truncate'])]
      break
    case 'infer':
    case 'engine.infer':
      args = [genInferReq(r), genCallOpts(r)]
      break
    case 'Engine.open':
      args = [genEngineOpts(r)]
      break
    case 'engine.close':
      args = [r.chance(0.6) ? { drainMs: r.pick(NUMBERS) } : genValue(r, 1)]
      break
    case 'sync': {
      // The options object itself, or `{ baseDir: <value> }` (sometimes with
      // a misspelled or extra key), or `{ baseDir }` behind a throwing getter.
      const name = r.pick(['errorCodes', 'optionNames', 'findCudaWorkerPath', 'discoveryCandidates'])
      const k = r.int(4)
      let opts
      if (k === 0) opts = genValue(r, 1)
      else if (k === 1) opts = { baseDir: r.chance(0.2) ? genString(r) : genValue(r, 1) }
      else if (k === 2) opts = { [r.pick(['basedir', 'base', 'baseDir', '__proto__', 'cwd'])]: genValue(r, 1), ...(r.chance(0.5) ? { baseDir: '/tmp' } : {}) }
      else opts = Object.defineProperty({}, 'baseDir', { enumerable: true, get: r.pick([() => { throw new Error('getter') }, () => { throw Symbol('s') }, () => genValue(r, 1)]) })
      args = [name, opts]
      break
    }
    default:
      args = r.chance(0.5) ? [] : [genValue(r, 1)]
  }
  return args
}

function describe(v, depth = 0) {
  try {
    if (typeof v === 'string') return v.length > 60 ? `string(${v.length}) ${JSON.stringify(v.slice(0, 40))}…` : JSON.stringify(v)
    if (typeof v === 'bigint') return `${v}n`
    if (typeof v === 'symbol' || typeof v === 'function') return String(v).slice(0, 40)
    if (typeof v !== 'object' || v === null) return Object.is(v, -0) ? '-0' : String(v)
    if (depth > 2) return '…'
    if (ArrayBuffer.isView(v)) {
      let len
      try {
        len = v.length ?? v.byteLength
      } catch {
        len = '?'
      }
      return `${v.constructor.name}(${len}${v.buffer?.detached ? ', detached' : ''})`
    }
    if (Array.isArray(v)) {
      const n = v.length // read once: a Proxy's `length` may lie differently each time
      if (!(n <= 8)) return `Array(length ${n})`
      const items = []
      for (let i = 0; i < n; i++) items.push(describe(v[i], depth + 1))
      return `[${items.join(', ')}]`
    }
    const keys = Reflect.ownKeys(v).slice(0, 8)
    return `{${keys.map((k) => {
      const d = Object.getOwnPropertyDescriptor(v, k)
      const val = d && 'get' in d && d.get ? '<getter>' : describe(d?.value, depth + 1)
      return `${String(k).replace(/\0/g, '\\0')}: ${val}`
    }).join(', ')}}`
  } catch {
    return '<Proxy or throwing object>'
  }
}

// ---- the child: run the inputs ---------------------------------------------

async function child(a) {
  const require = createRequire(import.meta.url)
  const m = require(path.join(ROOT, 'index.js'))
  const codes = new Set(m.errorCodes().map((c) => c.code))
  const engine = await m.Engine.open({ device: 'cpu' })
  const refText = 'hello world'
  const refEmbed = await m.embed(refText)
  const refInfer = await engine.infer({ inputs: [{ name: 'text', shape: [1], datatype: 'BYTES', data: [refText] }],
    outputs: [{ name: 'sentence_embedding' }] })
  const progressFd = a.progress ? fs.openSync(a.progress, 'w') : null
  const stats = { inputs: 0, calls: 0, settled: 0, resolved: 0, rejected: 0, syncThrows: 0, notPromise: 0,
    uncoded: 0, unknownCode: 0, blocking: 0, internal: 0, unsettled: 0, ordinary: 0, ordinaryWrong: 0, syncExportCalls: 0, syncExportThrows: 0,
    opened: 0, codes: {} }
  const failures = []
  const slow = [] // calls that took over 200 ms (reported, not a failure)
  const blocking = [] // calls whose synchronous part held the event loop over 100 ms (reported)
  const fail = (kind, input, detail) => {
    if (failures.length < 50) failures.push({ kind, input: input.i, fn: input.fn, args: input.args.map((x) => describe(x)), detail })
  }
  const closeLater = []
  let closeEngine = null // an engine the engine.close inputs close, reopened as needed

  const check = (input, p, ordinaryCheck) => {
    stats.calls++
    if (!p || typeof p.then !== 'function') {
      stats.notPromise++
      fail('not a promise', input, describe(p))
      return Promise.resolve()
    }
    let settledCount = 0
    const t = performance.now()
    const timed = () => {
      const ms = performance.now() - t
      if (ms > 200 && slow.length < 200) slow.push({ ms: Math.round(ms), input: input.i, fn: input.fn, args: input.args.map((x) => describe(x)) })
    }
    const tracked = p.then(
      (v) => {
        timed()
        settledCount++
        stats.settled++
        stats.resolved++
        if (input.fn === 'Engine.open' && v && typeof v.close === 'function') {
          stats.opened++
          closeLater.push(v)
        }
        if (ordinaryCheck) {
          const why = ordinaryCheck(v)
          if (why) {
            stats.ordinaryWrong++
            fail('ordinary call wrong', input, why)
          }
        }
      },
      (e) => {
        timed()
        settledCount++
        stats.settled++
        stats.rejected++
        const code = e && typeof e === 'object' ? e.code : undefined
        stats.codes[code ?? '(none)'] = (stats.codes[code ?? '(none)'] ?? 0) + 1
        if (typeof code !== 'string') {
          stats.uncoded++
          fail('rejection without a code', input, describe(e) + ' ' + String(e?.message ?? e).slice(0, 200))
        } else if (!codes.has(code)) {
          stats.unknownCode++
          fail('code not in errorCodes()', input, `${code}: ${String(e.message).slice(0, 200)}`)
        } else if (code === 'E_INTERNAL') {
          stats.internal++
          fail('E_INTERNAL', input, String(e.message).slice(0, 300))
        }
        if (ordinaryCheck) {
          stats.ordinaryWrong++
          fail('ordinary call rejected', input, `${code}: ${e?.message}`)
        }
      },
    )
    tracked.settledCount = () => settledCount
    return tracked
  }

  const call = (input) => {
    const { fn, args } = input
    if (fn === 'sync') {
      const [name, arg] = args
      stats.syncExportCalls++
      try {
        m[name](arg)
      } catch (e) {
        stats.syncExportThrows++
        const code = e && typeof e === 'object' ? e.code : undefined
        stats.codes[code ?? '(none)'] = (stats.codes[code ?? '(none)'] ?? 0) + 1
        const msg = String(e?.message ?? '')
        if (typeof code !== 'string' || !codes.has(code)) fail('sync export threw without a table code', input, describe(e) + ' ' + msg.slice(0, 200))
        else if (code === 'E_INTERNAL') {
          stats.internal++
          fail('E_INTERNAL', input, msg.slice(0, 300))
        } else if (code === 'E_INVALID_ARG' && !msg.includes('`options')) {
          fail('sync export E_INVALID_ARG without naming the field', input, msg.slice(0, 300))
        }
      }
      return null
    }
    let target = m
    let method = fn
    if (fn.startsWith('engine.')) {
      method = fn.slice(7)
      target = method === 'close' ? closeEngine : engine
    } else if (fn === 'Engine.open') {
      target = m.Engine
      method = 'open'
    }
    try {
      const t = performance.now()
      const p = target[method](...args)
      const ms = performance.now() - t
      if (ms > 100) {
        stats.blocking++
        if (blocking.length < 200) blocking.push({ ms: Math.round(ms), input: input.i, fn, args: args.map((x) => describe(x)) })
      }
      return check(input, p)
    } catch (e) {
      stats.syncThrows++
      fail('synchronous throw', input, `${e?.code ?? '(no code)'}: ${String(e?.message ?? e).slice(0, 200)}`)
      return null
    }
  }

  const ordinary = (k) => {
    const input = { i: -1, fn: 'ordinary', args: [k] }
    stats.ordinary++
    const kind = k % 3
    if (kind === 0) {
      const payload = { k, s: 'x'.repeat(k % 7), n: [1.5, -0, 1e300] }
      return check(input, m.submit({ type: 'echo', id: String(k), payload }), (v) =>
        JSON.stringify(v.result) === JSON.stringify(payload) && v.id === String(k) ? null : `echo ${k} came back ${JSON.stringify(v.result)}`)
    }
    if (kind === 1) {
      return check(input, m.embed(refText), (v) => maxDiff(v, refEmbed) < 1e-4 ? null : `embed differs by ${maxDiff(v, refEmbed)}`)
    }
    return check(input, engine.infer({ inputs: [{ name: 'text', shape: [1], datatype: 'BYTES', data: [refText] }],
      outputs: [{ name: 'sentence_embedding' }] }), (v) => {
      const d = maxDiff(v.outputs[0].data, refInfer.outputs[0].data)
      return d < 1e-4 ? null : `infer differs by ${d}`
    })
  }

  const start = a.only ?? a.start
  const end = a.only != null ? a.only + 1 : a.n
  const pending = new Set()
  let ordinaryK = 0
  const t0 = Date.now()
  for (let base = start; base < end; base += a.concurrency) {
    const last = Math.min(end, base + a.concurrency)
    if (progressFd != null) fs.writeSync(progressFd, `${base} ${last}\n`)
    if (closeEngine == null || closeEngine.__closed) {
      closeEngine = await m.Engine.open({ device: 'cpu', threads: 1 })
    }
    const batch = []
    for (let i = base; i < last; i++) {
      const input = genInput(a.seed, i)
      stats.inputs++
      if (input.fn === 'engine.close') closeEngine.__closed = true
      const p = call(input)
      if (p) batch.push(p)
      if (i % 16 === 0) batch.push(ordinary(ordinaryK++))
    }
    for (const p of batch) pending.add(p)
    // Wait for the batch, but never forever: a promise that never settles is
    // counted at the end, not allowed to stall the run.
    await Promise.race([Promise.all(batch), new Promise((res) => setTimeout(res, 30000).unref())])
    for (const p of batch) if (p.settledCount() > 0) pending.delete(p)
    while (closeLater.length) await closeLater.pop().close({ drainMs: 0 }).catch(() => {})
    if (!a.json && (last - start) % 10000 < a.concurrency) {
      process.stderr.write(`fuzz-binding: ${last - start}/${end - start} inputs, ${((Date.now() - t0) / 1000).toFixed(1)} s\n`)
    }
  }
  // The stragglers get a last minute.
  const deadline = Date.now() + 60000
  while (pending.size && Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 100))
    for (const p of pending) if (p.settledCount() > 0) pending.delete(p)
  }
  stats.unsettled = pending.size
  for (const p of pending) if (failures.length < 50) failures.push({ kind: 'never settled' })
  stats.seconds = (Date.now() - t0) / 1000
  await engine.close({ drainMs: 0 }).catch(() => {})
  if (closeEngine) await closeEngine.close({ drainMs: 0 }).catch(() => {})
  process.stdout.write(JSON.stringify({ done: true, stats, failures, slowest: slow.sort((x, y) => y.ms - x.ms).slice(0, 10),
    blocking: blocking.sort((x, y) => y.ms - x.ms).slice(0, 10) }) + '\n')
  // Exit even if a never-settled call keeps a handle open.
  process.exit(0)
}

function maxDiff(a, b) {
  if (!a || !b || a.length !== b.length) return Infinity
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]))
  return d
}

// ---- the parent: run the child, see a crash ----------------------------------

async function parent(a) {
  const progress = path.join(os.tmpdir(), `fuzz-binding-${process.pid}-${a.seed}.progress`)
  const argv = [fileURLToPath(import.meta.url), '--child', '--n', String(a.n), '--seed', String(a.seed),
    '--concurrency', String(a.concurrency), '--progress', progress]
  if (a.only != null) argv.push('--only', String(a.only))
  if (a.start) argv.push('--start', String(a.start))
  if (a.json) argv.push('--json')
  if (a.heavy) argv.push('--heavy')
  const env = { ...process.env }
  env.CUDA_ENGINE_MODEL ??= path.join(ROOT, 'models', 'all-MiniLM-L6-v2')
  const c = spawn(process.execPath, ['--stack-size=984', ...argv], { stdio: ['ignore', 'pipe', 'inherit'], env, cwd: ROOT })
  let out = ''
  c.stdout.on('data', (d) => (out += d))
  const [code, signal] = await new Promise((res) => c.on('exit', (code, signal) => res([code, signal])))
  const line = out.split('\n').find((l) => l.startsWith('{"done"'))
  let report
  if (line) {
    report = JSON.parse(line)
  } else {
    // A crash: name the inputs that were in flight.
    let window = null
    try {
      const lines = fs.readFileSync(progress, 'utf8').trim().split('\n')
      window = lines[lines.length - 1].split(' ').map(Number)
    } catch {}
    const inFlight = []
    if (window) {
      for (let i = window[0]; i < window[1] && inFlight.length < 64; i++) {
        const inp = genInput(a.seed, i)
        inFlight.push({ input: i, fn: inp.fn, args: inp.args.map((x) => describe(x)) })
      }
    }
    report = { done: false, crash: { code, signal, seed: a.seed, inFlight,
      replay: `node scripts/fuzz-binding.mjs --seed ${a.seed} --only <input>` } }
  }
  fs.rmSync(progress, { force: true })
  return report
}

function ok(report) {
  if (!report.done) return false
  const s = report.stats
  return s.syncThrows === 0 && s.notPromise === 0 && s.uncoded === 0 && s.unknownCode === 0 && s.internal === 0 &&
    s.unsettled === 0 && s.ordinaryWrong === 0 && s.settled === s.calls && report.failures.length === 0
}

const main = process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)
const args = main ? parseArgs(process.argv.slice(2)) : null
if (!main) {
  // imported (tests): genInput and describe only
} else if (args.child) {
  await child(args)
} else {
  const report = await parent(args)
  report.seed = args.seed
  report.n = args.n
  report.ok = ok(report)
  if (args.json) {
    process.stdout.write(JSON.stringify(report) + '\n')
  } else {
    console.log(JSON.stringify(report, null, 1))
    console.log(report.ok ? 'fuzz-binding: ok' : 'fuzz-binding: FAILED')
  }
  process.exit(report.ok ? 0 : 1)
}

export { genInput, describe }
