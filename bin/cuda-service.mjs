#!/usr/bin/env node
// cuda-service: the cuda-engine addon behind HTTP (default 127.0.0.1:8096).
//
//   GET  /livez           -> 200 {"status":"ok"}: liveness, never needs the token
//   GET  /readyz          -> 200 {"status":"ready"}, 503 once shutdown began
//   GET  /api/v1/health   -> 200 health JSON (503 when status is "error")
//   POST /api/v1/submit   -> 200 job result; body = the JSON envelope
//                            (?timeoutMs=N&target=auto|local|worker)
//   POST /api/v1/search   -> 200 hits; body = a vector_search payload
//   POST /v1/embeddings   -> OpenAI-compatible embeddings (service/openai.mjs)
//   GET  /v1/models
//   /v2/...               -> KServe v2 / Open Inference Protocol REST (service/kserve.mjs)
//   GET  /metrics         -> Prometheus text: the engine's metrics() and the service's
//
// Errors are JSON: {"ok":false,"error":{"code":"E_…","message":"…"}} on the
// :8096 routes, OpenAI's {"error":{message,type,param,code}} under /v1/ and
// KServe's {"error":"…","code":"E_…"} under /v2. An
// engine error's HTTP status comes from the addon's table (`errorCodes()`);
// the service's own rejections (Host, Origin, token, content type, body
// limits, timeouts) carry the statuses listed in docs/reliability.md "HTTP
// service", which documents every flag, variable, limit and default below.
// Byte results come back as `result_b64`, as in the wire form of DESIGN.md.
//
// On start it prints one JSON line on stdout: {"listening":"http://HOST:PORT"};
// it logs one JSON line per request on stderr (off: --no-log / CUDA_SERVICE_LOG=0).
import http from 'node:http'
import crypto from 'node:crypto'
import { readFileSync, realpathSync } from 'node:fs'
import v8 from 'node:v8'
import vm from 'node:vm'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { openaiRoutes, openaiError } from './service/openai.mjs'
import { kserveRoutes } from './service/kserve.mjs'
import { HttpMetrics } from './service/metrics.mjs'

const require = createRequire(import.meta.url)
const { Engine, errorCodes } = require('../loader.cjs')
const { version: VERSION } = require('../package.json')

const MiB = 1024 * 1024

// A full GC after large bodies are released: an idle process would otherwise
// keep them (and their RSS) until its next allocation-driven collection.
v8.setFlagsFromString('--expose-gc')
const collectGarbage = vm.runInNewContext('gc')
v8.setFlagsFromString('--no-expose-gc')

/** Value flags: [flag, config key, env var (or list, first wins), default, kind]. */
const VALUE_FLAGS = [
  ['--port', 'port', ['CUDA_SERVICE_PORT', 'PORT'], '8096', 'port'],
  // Never the generic HOST variable: some shells set it, and it used to rebind the service.
  ['--host', 'host', ['CUDA_SERVICE_HOST'], '127.0.0.1', 'string'],
  ['--max-body', 'maxBody', ['CUDA_SERVICE_MAX_BODY'], String(17 * MiB), 'posint'],
  ['--max-body-total', 'maxBodyTotal', ['CUDA_SERVICE_MAX_BODY_TOTAL'], undefined, 'posint'],
  ['--body-timeout', 'bodyTimeoutMs', ['CUDA_SERVICE_BODY_TIMEOUT_MS'], '10000', 'posint'],
  ['--headers-timeout', 'headersTimeoutMs', ['CUDA_SERVICE_HEADERS_TIMEOUT_MS'], '10000', 'posint'],
  ['--request-timeout', 'requestTimeoutMs', ['CUDA_SERVICE_REQUEST_TIMEOUT_MS'], '60000', 'posint'],
  ['--keep-alive-timeout', 'keepAliveTimeoutMs', ['CUDA_SERVICE_KEEP_ALIVE_TIMEOUT_MS'], '5000', 'posint'],
  ['--max-connections', 'maxConnections', ['CUDA_SERVICE_MAX_CONNECTIONS'], '256', 'posint'],
  ['--shutdown-timeout', 'shutdownTimeoutMs', ['CUDA_SERVICE_SHUTDOWN_TIMEOUT_MS'], '30000', 'posint'],
  ['--allow-origin', 'allowOrigins', ['CUDA_SERVICE_ALLOW_ORIGINS'], '', 'list'],
  ['--allow-host', 'allowHosts', ['CUDA_SERVICE_ALLOW_HOSTS'], '', 'list'],
  ['--token-file', 'tokenFile', ['CUDA_SERVICE_TOKEN_FILE'], undefined, 'string'],
  ['--worker', 'worker', [], undefined, 'string'],
  // NAME=PATH, repeatable: vector index files loaded at start, searched with vector_search jobs.
  ['--index', 'indexes', ['CUDA_SERVICE_INDEXES'], '', 'list'],
  ['--options', 'options', ['CUDA_ENGINE_OPTIONS'], '{}', 'json'],
]
/** Switches: [flag, config key, value it sets]. */
const SWITCHES = [
  ['--allow-any-content-type', 'allowAnyContentType', true],
  ['--log', 'log', true],
  ['--no-log', 'log', false],
]

const USAGE = `usage: cuda-service ${VALUE_FLAGS.map(([f]) => `[${f} V]`).join(' ')} ${SWITCHES.map(([f]) => `[${f}]`).join(' ')}
(every flag, variable and default: docs/reliability.md "HTTP service")`

const envFlag = (v) => v !== undefined && v !== '' && !/^(0|false|no|off)$/i.test(v)

/** Flags and environment to the service's configuration; exits 64 on a bad value. */
export function parseArgs(argv, env) {
  const raw = {}
  for (const [, key, vars, def] of VALUE_FLAGS) raw[key] = vars.map((n) => env[n]).find((v) => v !== undefined) ?? def
  const cfg = {
    allowAnyContentType: envFlag(env.CUDA_SERVICE_ALLOW_ANY_CONTENT_TYPE),
    log: env.CUDA_SERVICE_LOG === undefined ? true : envFlag(env.CUDA_SERVICE_LOG),
  }
  const lists = { allowOrigins: [], allowHosts: [], indexes: [] }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--help' || k === '-h') {
      console.log(USAGE)
      process.exit(0)
    }
    const sw = SWITCHES.find(([f]) => f === k)
    if (sw) {
      cfg[sw[1]] = sw[2]
      continue
    }
    const flag = VALUE_FLAGS.find(([f]) => f === k)
    if (!flag) fail(`unknown argument ${k}`)
    const v = argv[++i]
    if (v === undefined) fail(`${k} needs a value`)
    // List flags repeat (and take commas); the first flag replaces the env value.
    if (flag[4] === 'list') lists[flag[1]].push(v)
    else raw[flag[1]] = v
  }
  for (const [flag, key, vars, , kind] of VALUE_FLAGS) {
    const v = kind === 'list' && lists[key].length ? lists[key].join(',') : raw[key]
    const what = [flag, ...vars].join(' / ')
    if (v === undefined) cfg[key] = undefined
    else if (kind === 'port' || kind === 'posint') {
      const n = Number(v)
      const ok = Number.isSafeInteger(n) && (kind === 'port' ? n >= 0 && n <= 65535 : n >= 1)
      if (!ok) fail(`${what} must be ${kind === 'port' ? '0..65535' : 'a positive integer'}, got ${v}`)
      cfg[key] = n
    } else if (key === 'indexes') {
      cfg[key] = String(v)
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
        .map((spec) => {
          const m = /^([A-Za-z0-9_.-]{1,128})=(.+)$/.exec(spec)
          if (!m) fail(`${what} takes NAME=PATH (NAME of A-Z a-z 0-9 _ . -), got ${JSON.stringify(spec)}`)
          return { name: m[1], path: m[2] }
        })
    } else if (kind === 'list') {
      cfg[key] = String(v)
        .split(',')
        .map((s) => s.trim().toLowerCase().replace(/\/+$/, ''))
        .filter(Boolean)
    } else if (kind === 'json') {
      try {
        cfg[key] = JSON.parse(v)
      } catch (e) {
        fail(`${what} is not JSON: ${e.message}`)
      }
      if (cfg[key] === null || typeof cfg[key] !== 'object' || Array.isArray(cfg[key])) fail(`${what} must be a JSON object`)
    } else cfg[key] = v
  }
  if (cfg.worker !== undefined) cfg.options.worker = cfg.worker
  delete cfg.worker
  cfg.maxBodyTotal ??= Math.max(256 * MiB, cfg.maxBody)
  if (cfg.maxBodyTotal < cfg.maxBody) fail(`--max-body-total (${cfg.maxBodyTotal}) must be >= --max-body (${cfg.maxBody})`)
  if (cfg.headersTimeoutMs > cfg.requestTimeoutMs) fail(`--headers-timeout (${cfg.headersTimeoutMs}) must be <= --request-timeout (${cfg.requestTimeoutMs})`)
  // The token: --token-file / CUDA_SERVICE_TOKEN_FILE (a file holding it), else CUDA_SERVICE_TOKEN.
  let token = env.CUDA_SERVICE_TOKEN
  if (cfg.tokenFile !== undefined) {
    try {
      token = readFileSync(cfg.tokenFile, 'utf8')
    } catch (e) {
      fail(`--token-file: cannot read ${cfg.tokenFile}: ${e.message}`)
    }
  }
  delete cfg.tokenFile
  if (token !== undefined) {
    token = token.trim()
    if (!token) fail('the bearer token (--token-file / CUDA_SERVICE_TOKEN) is empty')
  }
  cfg.token = token
  return cfg
}

function fail(msg) {
  console.error(`cuda-service: ${msg}\n${USAGE}`)
  process.exit(64)
}

/** HTTP status of every engine code: the addon's table, defined once in Rust. */
const STATUS = new Map(errorCodes().map((e) => [e.code, e.http_status]))

/** HTTP status for a stable error code; 500 for a code not in the table. */
export function statusFor(code) {
  return STATUS.get(code) ?? 500
}

/** A rejection by the service itself (not the engine), with its own status. */
class HttpError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message)
    this.status = status
    this.code = code
    this.headers = headers
  }
}
/** An HttpError; `param` (OpenAI's field naming the bad parameter) is not a header. */
const httpError = (status, code, message, { param, ...headers } = {}) => Object.assign(new HttpError(status, code, message, headers), { param })

/** The error body of each route family (ctx.shape, from the path). */
function errorBody(shape, status, code, message, param) {
  if (shape === 'openai') return { error: openaiError(code, status, message, param) }
  if (shape === 'kserve') return { error: message, code }
  return { ok: false, error: { code, message } }
}
const shapeOf = (path) => (path.startsWith('/v1/') ? 'openai' : path === '/v2' || path.startsWith('/v2/') ? 'kserve' : 'legacy')
const CLOSE = { connection: 'close' }
const CTX = Symbol('request log context')

/** The JSON wire form of a JobResult: bytes become result_b64. */
function wireResult(r) {
  if (Buffer.isBuffer(r.result) || r.result instanceof Uint8Array) {
    const { result, ...rest } = r
    return { ...rest, result_b64: Buffer.from(result).toString('base64') }
  }
  return r
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]'])
const isLoopbackAddress = (h) => h === 'localhost' || h === '::1' || h === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(h)

/** The name part of a Host header, lowercased: `[::1]:80` -> `[::1]`, `a:1` -> `a`. */
function hostName(host) {
  const h = host.trim().toLowerCase()
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1) || h
  const colon = h.lastIndexOf(':')
  return colon === -1 ? h : h.slice(0, colon)
}

/** The sha256 of a string: equal-length inputs for timingSafeEqual. */
const digest = (s) => crypto.createHash('sha256').update(s).digest()

/** Discard whatever the client still sends, then drop the connection (a bounded linger). */
function lingerAndClose(req, res) {
  req.resume()
  const drop = () => setTimeout(() => req.socket?.destroy(), 1000).unref()
  if (res.writableFinished) drop()
  else res.once('finish', drop)
}

export async function startService(config) {
  const cfg = { ...parseArgs([], {}), options: {}, ...config }
  cfg.maxBodyTotal = config.maxBodyTotal ?? Math.max(256 * MiB, cfg.maxBody)
  const log = (line) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...line })}\n`)
  const accessLog = (line) => (cfg.log || line.status >= 500) && log(line)

  const hostCheck = isLoopbackAddress(cfg.host) || cfg.allowHosts.length > 0
  const bound = cfg.host.includes(':') && !cfg.host.startsWith('[') ? `[${cfg.host}]` : cfg.host
  const allowedHosts = new Set([...LOOPBACK_NAMES, bound.toLowerCase(), ...cfg.allowHosts.map(hostName)])
  const allowedOrigins = new Set(cfg.allowOrigins)
  const tokenDigest = cfg.token === undefined ? null : digest(cfg.token)
  let buffered = 0 // body bytes held by all requests (bounded by maxBodyTotal)
  let released = 0 // body bytes released since the last forced GC
  let gcTimer = null
  const GC_AFTER_BYTES = 16 * MiB
  let stopping = false // shutdown began: readiness is false, replies close their connection
  let engineClosed = false
  const httpMetrics = new HttpMetrics()

  const engine = await Engine.open(cfg.options)
  for (const { name, path } of cfg.indexes ?? []) {
    try {
      await engine.loadIndex(name, path)
    } catch (err) {
      await engine.close({ drainMs: 0 })
      throw err
    }
  }

  /** Read the body into memory, bounded by size, progress time and the shared budget. */
  function readBody(req, ctx) {
    const declared = req.headers['content-length'] === undefined ? null : Number(req.headers['content-length'])
    if (declared !== null && declared > cfg.maxBody)
      throw new HttpError(413, 'E_TOO_LARGE', `the body is ${declared} bytes, over the ${cfg.maxBody}-byte limit (--max-body)`, CLOSE)
    const reserve = (n) => {
      if (buffered + n > cfg.maxBodyTotal)
        throw new HttpError(503, 'E_OVERLOADED', `request bodies in memory would exceed ${cfg.maxBodyTotal} bytes (--max-body-total); retry later`, {
          ...CLOSE,
          'retry-after': '1',
        })
      buffered += n
      ctx.reserved += n
    }
    if (declared) reserve(declared)
    return new Promise((resolve, reject) => {
      // A declared length is read into one block (freed in one piece), chunked bodies into a list.
      let block = declared ? Buffer.allocUnsafeSlow(declared) : null
      let chunks = declared ? null : []
      let size = 0
      let done = false
      const finish = (err, value) => {
        if (done) return
        done = true
        clearTimeout(timer)
        block = chunks = null // release what was buffered, whatever happens next
        if (err) reject(err)
        else resolve(value)
      }
      const timer = setTimeout(
        () => finish(new HttpError(408, 'E_REQUEST_TIMEOUT', `no body bytes for ${cfg.bodyTimeoutMs} ms (--body-timeout)`, CLOSE)),
        cfg.bodyTimeoutMs,
      )
      req.on('data', (c) => {
        if (done) return
        size += c.length
        if (size > cfg.maxBody) return finish(new HttpError(413, 'E_TOO_LARGE', `the body is over the ${cfg.maxBody}-byte limit (--max-body)`, CLOSE))
        try {
          if (declared === null || size > declared) reserve(c.length)
        } catch (e) {
          return finish(e)
        }
        if (block) c.copy(block, size - c.length)
        else chunks.push(c)
        timer.refresh()
      })
      req.on('end', () => finish(null, block ?? (chunks && Buffer.concat(chunks, size))))
      const gone = () => finish(Object.assign(new Error('the client closed the connection while sending the body'), { code: 'E_CANCELLED', aborted: true }))
      req.on('error', gone)
      req.on('close', gone) // after 'end' this is a no-op
    })
  }

  const requireJson = (req) => {
    // A JSON content type: a cross-site page cannot send one without a CORS preflight.
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase()
    if (!cfg.allowAnyContentType && type !== 'application/json')
      throw new HttpError(415, 'E_UNSUPPORTED_MEDIA_TYPE', `the body must be JSON sent as "Content-Type: application/json", got ${JSON.stringify(req.headers['content-type'] ?? null)} (--allow-any-content-type accepts any)`, CLOSE)
  }
  /** The body parsed as JSON (bounded like every body by readBody). */
  const readJson = async (req, ctx) => {
    const body = await readBody(req, ctx)
    try {
      return JSON.parse(body.toString('utf8'))
    } catch (e) {
      throw new HttpError(400, 'E_BAD_JSON', `the body is not JSON: ${e.message}`)
    }
  }
  /** A signal that aborts when the client disconnects (its job is cancelled: E_CANCELLED). */
  const abortOnClose = (res) => {
    const abort = new AbortController()
    res.on('close', () => {
      if (!res.writableFinished) abort.abort()
    })
    return abort.signal
  }
  /** The model the engine serves ({name, dims, normalize}); E_UNKNOWN_MODEL when none is loaded. */
  let servedModel = null
  const served = async () => {
    if (servedModel) return servedModel
    const [m] = await engine.models()
    if (!m) throw new HttpError(404, 'E_UNKNOWN_MODEL', 'this service has no model loaded (Engine.open options: model)')
    servedModel = { name: m.name, dims: Number(m.parameters?.hidden_size), normalize: m.parameters?.normalize !== false }
    return servedModel
  }
  const ready = () => !stopping && !engineClosed

  /** A streamed NDJSON reply: line(obj) waits while the socket is full; a gone client throws. */
  function startStream(res, ctx) {
    res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store', ...(stopping ? CLOSE : {}) })
    return {
      async line(obj) {
        if (res.destroyed) throw Object.assign(new Error('the client closed the connection during the reply'), { aborted: true })
        const text = `${JSON.stringify(obj)}\n`
        ctx.bytes += Buffer.byteLength(text)
        if (res.write(text)) return
        // Back-pressure: wait until the socket drains (or the client leaves).
        await new Promise((resolve) => {
          const done = () => (res.off('drain', done), res.off('close', done), resolve())
          res.on('drain', done).on('close', done)
        })
      },
      end: () => res.end(),
    }
  }

  // What the route modules (service/*.mjs) use; send, sendText and getOnly are hoisted below.
  const svc = { engine, served, ready, readJson, requireJson, httpError, abortOnClose, statusFor, version: VERSION, startStream, send, sendText, getOnly }

  /** The :8096 routes. */
  const legacyRoutes = [
    { path: '/livez', open: true, handler: getOnly((_q, res) => send(res, 200, { status: 'ok' })) },
    { path: '/readyz', handler: getOnly((_q, res) => send(res, ready() ? 200 : 503, { status: ready() ? 'ready' : 'stopping' })) },
    {
      path: '/api/v1/health',
      handler: async (req, res) => {
        if (req.method !== 'GET') throw new HttpError(405, 'E_INVALID_ARG', 'use GET /api/v1/health', { allow: 'GET' })
        const h = await engine.health()
        return send(res, h.status === 'error' ? 503 : 200, h)
      },
    },
    {
      path: '/api/v1/submit',
      handler: async (req, res, ctx, url) => {
        if (req.method !== 'POST') throw new HttpError(405, 'E_INVALID_ARG', 'use POST /api/v1/submit with a JSON envelope', { allow: 'POST' })
        const callOpts = {}
        const t = url.searchParams.get('timeoutMs')
        if (t !== null) {
          const n = Number(t)
          if (!Number.isFinite(n) || n < 0) throw new HttpError(400, 'E_INVALID_ARG', `timeoutMs must be a number >= 0, got ${JSON.stringify(t)}`)
          callOpts.timeoutMs = n
        }
        const target = url.searchParams.get('target')
        if (target !== null) callOpts.target = target
        requireJson(req)
        const body = await readBody(req, ctx)
        callOpts.signal = abortOnClose(res)
        // The raw bytes go to the engine, which decodes and limits them.
        const result = await engine.submit(new Uint8Array(body.buffer, body.byteOffset, body.length), callOpts)
        return send(res, 200, wireResult(result))
      },
    },
    {
      // A vector_search payload as the body: { index, k?, namespace?, vector | vectors | text | texts }.
      path: '/api/v1/search',
      handler: async (req, res, ctx) => {
        if (req.method !== 'POST') throw new HttpError(405, 'E_INVALID_ARG', 'use POST /api/v1/search with a JSON vector_search payload', { allow: 'POST' })
        requireJson(req)
        const body = await readBody(req, ctx)
        // The body stays bytes: the engine parses (and limits) the envelope around it.
        const envelope = Buffer.concat([Buffer.from('{"type":"vector_search","payload":'), body, Buffer.from('}')])
        const result = await engine.submit(new Uint8Array(envelope.buffer, envelope.byteOffset, envelope.length), { signal: abortOnClose(res) })
        return send(res, 200, result.result)
      },
    },
    {
      path: '/metrics',
      handler: getOnly((_q, res) => {
        const own = engine.metrics()
        const text = `${own}${own.endsWith('\n') ? '' : '\n'}${httpMetrics.text()}`
        return sendText(res, 200, text, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
      }),
    },
  ]
  const routes = [...legacyRoutes, ...openaiRoutes(svc), ...kserveRoutes(svc)]
  const ROUTE_LIST = routes.filter((r) => r.path).map((r) => r.path).join(', ')
  const findRoute = (path) => routes.find((r) => (r.path ? r.path === path : r.match(path)))

  async function handle(req, res, ctx) {
    // The request target is the client's: parsing it is inside the error boundary.
    let url
    try {
      url = new URL(req.url, 'http://localhost')
    } catch {
      throw new HttpError(400, 'E_INVALID_ARG', `the request target is not a valid URL: ${JSON.stringify(req.url.slice(0, 200))}`)
    }
    ctx.path = url.pathname
    ctx.shape = shapeOf(url.pathname)
    if (hostCheck && req.headers.host !== undefined && !allowedHosts.has('*') && !allowedHosts.has(hostName(req.headers.host)))
      throw new HttpError(403, 'E_FORBIDDEN', `Host ${JSON.stringify(req.headers.host)} is not allowed (allowed: ${[...allowedHosts].join(', ')}; --allow-host adds names)`)
    const origin = req.headers.origin
    if (origin !== undefined) {
      const o = origin.toLowerCase()
      if (!allowedOrigins.has(o) && !allowedOrigins.has('*'))
        throw new HttpError(403, 'E_FORBIDDEN', `Origin ${JSON.stringify(origin)} is not allowed (--allow-origin / CUDA_SERVICE_ALLOW_ORIGINS)`)
      res.setHeader('access-control-allow-origin', origin)
      res.setHeader('vary', 'Origin')
      if (req.method === 'OPTIONS') {
        // A CORS preflight from an allowed origin (browsers send no credentials with it).
        res.writeHead(204, {
          'access-control-allow-methods': 'GET, POST',
          'access-control-allow-headers': 'authorization, content-type',
          'access-control-max-age': '600',
        })
        return res.end()
      }
    }
    const route = findRoute(url.pathname)
    ctx.route = route ? (route.route?.(url.pathname) ?? route.path) : null
    if (!route?.open && tokenDigest) {
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.headers.authorization ?? '')
      if (!m) throw new HttpError(401, 'E_UNAUTHORIZED', 'this service needs "Authorization: Bearer <token>"', { 'www-authenticate': 'Bearer realm="cuda-service"' })
      if (!crypto.timingSafeEqual(digest(m[1]), tokenDigest))
        throw new HttpError(401, 'E_UNAUTHORIZED', 'the bearer token is not valid', { 'www-authenticate': 'Bearer realm="cuda-service", error="invalid_token"' })
    }
    if (!route) throw new HttpError(404, 'E_INVALID_ARG', `no route ${req.method} ${url.pathname} (routes: ${ROUTE_LIST}, /v2/models/{name}[/versions/{v}][/ready|/infer])`)
    return route.handler(req, res, ctx, url)
  }

  /** A GET (or HEAD) route; other methods are 405. */
  function getOnly(handler) {
    return (req, res, ctx, url) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'E_INVALID_ARG', `use GET ${url.pathname}`, { allow: 'GET, HEAD' })
      return handler(req, res, ctx, url)
    }
  }

  function send(res, status, body, headers = {}) {
    return sendText(res, status, JSON.stringify(body), headers)
  }

  function sendText(res, status, text, headers = {}) {
    if (res.headersSent || res.destroyed) return
    const bytes = Buffer.byteLength(text)
    res.req[CTX].bytes = bytes
    res.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': bytes,
      ...(stopping ? CLOSE : {}),
      ...headers,
    })
    res.end(text)
  }

  function sendError(res, ctx, status, code, message, headers, param) {
    ctx.code = code
    if (status >= 500) ctx.message = message
    send(res, status, errorBody(ctx.shape, status, code, message, param), headers)
  }

  const server = http.createServer(
    {
      headersTimeout: cfg.headersTimeoutMs,
      requestTimeout: cfg.requestTimeoutMs,
      keepAliveTimeout: cfg.keepAliveTimeoutMs,
      // How often Node checks the two timeouts above (its default, 30 s, would overshoot them).
      connectionsCheckingInterval: Math.min(1000, Math.max(20, Math.floor(cfg.headersTimeoutMs / 4))),
    },
    (req, res) => {
      const ctx = { t0: performance.now(), method: req.method, path: req.url.slice(0, 200), route: null, shape: 'legacy', code: null, reserved: 0, bytes: 0 }
      req[CTX] = ctx
      httpMetrics.started()
      res.once('close', () => {
        buffered -= ctx.reserved
        released += ctx.reserved
        ctx.reserved = 0
        if (released >= GC_AFTER_BYTES && !gcTimer)
          gcTimer = setTimeout(() => {
            gcTimer = null
            released = 0
            collectGarbage()
          }, 1000).unref()
        const ms = performance.now() - ctx.t0
        const line = { method: ctx.method, path: ctx.path, route: ctx.route, status: res.statusCode, ms: +ms.toFixed(3), bytes: ctx.bytes, code: ctx.code }
        if (!res.writableFinished) {
          const when = req.complete ? 'before the reply' : 'while sending the request'
          Object.assign(line, { status: 499, code: 'E_CANCELLED', aborted: true, message: `the client closed the connection ${when}` })
        } else if (ctx.message) line.message = ctx.message
        httpMetrics.finished(ctx.route, line.status, ms / 1000)
        accessLog(line)
      })
      handle(req, res, ctx).catch((err) => {
        if (err?.aborted) return // the client is gone: logged on close, nothing to send
        let status, code
        if (err instanceof HttpError) ({ status, code } = err)
        else {
          code = typeof err?.code === 'string' && err.code.startsWith('E_') ? err.code : 'E_INTERNAL'
          status = statusFor(code)
        }
        // A body left unread is not drained for keep-alive: the connection closes after the reply.
        const headers = req.complete ? err?.headers : { ...err?.headers, ...CLOSE }
        if (!req.complete) lingerAndClose(req, res)
        sendError(res, ctx, status, code, String(err?.message ?? err), headers, err?.param)
      })
    },
  )
  server.maxConnections = cfg.maxConnections
  server.on('drop', (d) => cfg.log && log({ event: 'drop', reason: `over --max-connections (${cfg.maxConnections})`, remote: d?.remoteAddress }))
  // Malformed requests and header/request timeouts: answered here, as Node would, but logged.
  server.on('clientError', (err, socket) => {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
    const code = status === 431 ? 'E_TOO_LARGE' : status === 408 ? 'E_REQUEST_TIMEOUT' : 'E_INVALID_ARG'
    const res = socket._httpMessage
    if (res && status !== 408) {
      // The connection broke while a request was being read or answered (the
      // client went away mid-body): no reply; the request's log line says aborted.
      return socket.destroy()
    }
    if (res && !res.headersSent && !res.destroyed) {
      // The request was being read (a body still arriving at --request-timeout).
      const ctx = res.req?.[CTX]
      if (ctx) ctx.code = code
      res.once('finish', () => socket.destroy())
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...CLOSE })
      res.end(JSON.stringify({ ok: false, error: { code, message: `the request was not received within ${cfg.requestTimeoutMs} ms (--request-timeout)` } }))
      return
    }
    if (err.code !== 'ECONNRESET' && socket.writable && !res) {
      const body = JSON.stringify({ ok: false, error: { code, message: status === 408 ? `the request headers did not arrive within ${cfg.headersTimeoutMs} ms (--headers-timeout)` : `bad request: ${err.code}` } })
      socket.write(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
      if (cfg.log) log({ method: null, path: null, status, ms: null, code, client_error: err.code })
    }
    socket.destroy()
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(cfg.port, cfg.host, resolve)
  })

  /** Stop accepting, let in-flight requests finish (up to deadlineMs), then close the engine. */
  const close = async ({ deadlineMs = cfg.shutdownTimeoutMs } = {}) => {
    const t0 = Date.now()
    stopping = true
    const closed = new Promise((resolve) => server.close(resolve))
    server.closeIdleConnections()
    const force = setTimeout(() => server.closeAllConnections(), deadlineMs)
    await closed
    clearTimeout(force)
    const drainMs = Math.max(0, deadlineMs - (Date.now() - t0))
    engineClosed = true
    await engine.close({ drainMs })
  }
  return { server, engine, close, address: server.address(), config: cfg }
}

async function main() {
  const cfg = parseArgs(process.argv.slice(2), process.env)
  let svc
  try {
    svc = await startService(cfg)
  } catch (err) {
    console.error(`cuda-service: cannot start: ${err?.code ?? ''} ${err?.message ?? err}`)
    process.exit(1)
  }
  const { address, port } = svc.address
  const shownHost = address.includes(':') ? `[${address}]` : address
  console.log(JSON.stringify({ listening: `http://${shownHost}:${port}` }))
  let stopping = false
  const stop = async (signal) => {
    if (stopping) {
      // A second signal: stop waiting for in-flight requests.
      svc.server.closeAllConnections()
      return
    }
    stopping = true
    if (cfg.log) process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), event: 'shutdown', signal, deadline_ms: cfg.shutdownTimeoutMs })}\n`)
    try {
      await svc.close()
    } catch (err) {
      console.error(`cuda-service: close: ${err?.code ?? ''} ${err?.message ?? err}`)
      process.exit(1)
    }
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

// Run when executed (npm bin or `node bin/cuda-service.mjs`), not when imported.
const self = realpathSync(fileURLToPath(import.meta.url))
if (process.argv[1] && realpathSync(process.argv[1]) === self) main()
