#!/usr/bin/env node
// cuda-service: the cuda-engine addon behind HTTP (default port 8096).
//
//   GET  /api/v1/health   -> 200 health JSON (503 when status is "error")
//   POST /api/v1/submit   -> 200 job result; body = the JSON envelope
//                            (?timeoutMs=N&target=auto|local|worker)
//
// Errors are JSON: {"ok":false,"error":{"code":"E_…","message":"…"}} with an
// HTTP status derived from the stable code (statusFor below). Byte results
// come back as `result_b64`, as in the wire form of DESIGN.md.
//
// Usage: cuda-service [--port 8096] [--host 127.0.0.1] [--max-body BYTES]
//                     [--worker PATH] [--options JSON]
// Env: PORT, HOST, CUDA_SERVICE_MAX_BODY, CUDA_ENGINE_OPTIONS (JSON).
// On start it prints one JSON line: {"listening":"http://HOST:PORT"}.
import http from 'node:http'
import { realpathSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const { Engine } = require('../index.js')

const USAGE = 'usage: cuda-service [--port N] [--host ADDR] [--max-body BYTES] [--worker PATH] [--options JSON]'

function parseArgs(argv, env) {
  const o = {
    port: env.PORT ?? '8096',
    host: env.HOST ?? '127.0.0.1',
    maxBody: env.CUDA_SERVICE_MAX_BODY ?? String(64 * 1024 * 1024 + 1024 * 1024),
    options: env.CUDA_ENGINE_OPTIONS ?? '{}',
    worker: undefined,
  }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]
    if (k === '--help' || k === '-h') {
      console.log(USAGE)
      process.exit(0)
    }
    const v = argv[++i]
    if (v === undefined) fail(`${k} needs a value`)
    if (k === '--port') o.port = v
    else if (k === '--host') o.host = v
    else if (k === '--max-body') o.maxBody = v
    else if (k === '--worker') o.worker = v
    else if (k === '--options') o.options = v
    else fail(`unknown argument ${k}`)
  }
  const port = Number(o.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be 0..65535, got ${o.port}`)
  const maxBody = Number(o.maxBody)
  if (!Number.isInteger(maxBody) || maxBody < 1) fail(`--max-body must be a positive integer, got ${o.maxBody}`)
  let options
  try {
    options = JSON.parse(o.options)
  } catch (e) {
    fail(`--options / CUDA_ENGINE_OPTIONS is not JSON: ${e.message}`)
  }
  if (o.worker !== undefined) options.worker = o.worker
  return { port, host: o.host, maxBody, options }
}

function fail(msg) {
  console.error(`cuda-service: ${msg}\n${USAGE}`)
  process.exit(64)
}

/** HTTP status for a stable error code (DESIGN.md "Error codes"). */
export function statusFor(code) {
  switch (code) {
    case 'E_INVALID_ARG':
    case 'E_ENVELOPE':
    case 'E_BAD_BASE64':
    case 'E_BAD_JSON':
    case 'E_DECODE':
    case 'E_TOO_DEEP':
    case 'E_TOO_LONG':
      return 400
    case 'E_UNKNOWN_TYPE':
    case 'E_UNKNOWN_MODEL':
      return 404
    case 'E_TOO_LARGE':
      return 413
    case 'E_CANCELLED':
      return 499 // the client went away; nobody reads this
    case 'E_WORKER_EXIT':
    case 'E_WORKER_PROTOCOL':
    case 'E_OUTPUT_LIMIT':
      return 502 // the upstream (worker) misbehaved
    case 'E_OVERLOADED':
    case 'E_WORKER_NOT_FOUND':
    case 'E_WORKER_SPAWN':
    case 'E_CUDA_UNAVAILABLE':
    case 'E_GPU_OOM':
    case 'E_CUDA_FAULT':
      return 503
    case 'E_WORKER_TIMEOUT':
    case 'E_TIMEOUT':
      return 504
    default:
      return 500
  }
}

function send(res, status, body, extraHeaders = {}) {
  if (res.headersSent || res.destroyed) return
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...extraHeaders,
  })
  res.end(text)
}

function sendError(res, status, code, message, extraHeaders) {
  send(res, status, { ok: false, error: { code, message } }, extraHeaders)
}

/** The JSON wire form of a JobResult: bytes become result_b64. */
function wireResult(r) {
  if (Buffer.isBuffer(r.result) || r.result instanceof Uint8Array) {
    const { result, ...rest } = r
    return { ...rest, result_b64: Buffer.from(result).toString('base64') }
  }
  return r
}

/** Read the body up to `limit` bytes; null (and a 413 sent) when over. */
function readBody(req, res, limit) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > limit) {
      sendError(res, 413, 'E_TOO_LARGE', `the body is ${declared} bytes, over the ${limit}-byte limit (--max-body)`, { connection: 'close' })
      req.resume()
      return resolve(null)
    }
    const chunks = []
    let size = 0
    req.on('data', (c) => {
      size += c.length
      if (size > limit) {
        sendError(res, 413, 'E_TOO_LARGE', `the body is over the ${limit}-byte limit (--max-body)`, { connection: 'close' })
        req.destroy()
        resolve(null)
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks, size)))
    req.on('error', reject)
  })
}

export async function startService({ port, host, maxBody, options }) {
  const engine = await Engine.open(options)
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost')
    try {
      if (url.pathname === '/api/v1/health') {
        if (req.method !== 'GET') return sendError(res, 405, 'E_INVALID_ARG', 'use GET /api/v1/health', { allow: 'GET' })
        const h = await engine.health()
        return send(res, h.status === 'error' ? 503 : 200, h)
      }
      if (url.pathname === '/api/v1/submit') {
        if (req.method !== 'POST') return sendError(res, 405, 'E_INVALID_ARG', 'use POST /api/v1/submit with a JSON envelope', { allow: 'POST' })
        const callOpts = {}
        const t = url.searchParams.get('timeoutMs')
        if (t !== null) {
          const n = Number(t)
          if (!Number.isFinite(n) || n < 0) return sendError(res, 400, 'E_INVALID_ARG', `timeoutMs must be a number >= 0, got ${JSON.stringify(t)}`)
          callOpts.timeoutMs = n
        }
        const target = url.searchParams.get('target')
        if (target !== null) callOpts.target = target
        const body = await readBody(req, res, maxBody)
        if (body === null) return
        // A client that disconnects cancels its job (E_CANCELLED in the engine).
        const abort = new AbortController()
        res.on('close', () => {
          if (!res.writableFinished) abort.abort()
        })
        callOpts.signal = abort.signal
        // The raw bytes go to the engine, which decodes and limits them.
        const result = await engine.submit(new Uint8Array(body.buffer, body.byteOffset, body.length), callOpts)
        return send(res, 200, wireResult(result))
      }
      return sendError(res, 404, 'E_INVALID_ARG', `no route ${req.method} ${url.pathname} (routes: GET /api/v1/health, POST /api/v1/submit)`)
    } catch (err) {
      const code = typeof err?.code === 'string' && err.code.startsWith('E_') ? err.code : 'E_INTERNAL'
      const status = statusFor(code)
      if (status >= 500) console.error(`cuda-service: ${req.method} ${url.pathname}: ${code}: ${err?.message}`)
      return sendError(res, status, code, String(err?.message ?? err))
    }
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  const close = async () => {
    await new Promise((resolve) => server.close(resolve))
    await engine.close()
  }
  return { server, engine, close, address: server.address() }
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
  const stop = async () => {
    if (stopping) return
    stopping = true
    svc.server.closeAllConnections?.()
    await svc.close()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

// Run when executed (npm bin or `node bin/cuda-service.mjs`), not when imported.
const self = realpathSync(fileURLToPath(import.meta.url))
if (process.argv[1] && realpathSync(process.argv[1]) === self) main()
