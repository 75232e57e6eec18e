// Shared by the service suites: the real bin/cuda-service.mjs in a child
// process, and clients that control every header and byte.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import http from 'node:http'
import net from 'node:net'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

// CUDA_SERVICE_TEST_BIN: run this file against another build of the service (to see a test fail first).
export const BIN = process.env.CUDA_SERVICE_TEST_BIN ?? fileURLToPath(new URL('../bin/cuda-service.mjs', import.meta.url))
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** The environment without the variables the service reads (and without HOST). */
export function cleanEnv(extra) {
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith('CUDA_SERVICE_') || k === 'HOST' || k === 'PORT') delete env[k]
  return { ...env, ...extra }
}

/** Start the service on a free port; resolves to {url, port, child, stop, stderr, logs}. */
export async function startService(args = [], env = {}) {
  const child = spawn(process.execPath, [BIN, '--port', '0', ...args], { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const lines = readline.createInterface({ input: child.stdout })
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start: ${stderr}`)), 15000)
    lines.once('line', (l) => {
      clearTimeout(timer)
      resolve(JSON.parse(l).listening)
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`service exited ${code}: ${stderr}`))
    })
  })
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
    const exited = new Promise((r) => child.once('exit', (code) => r(code)))
    child.kill('SIGTERM')
    return exited
  }
  /** The JSON lines logged so far on stderr. */
  const logs = () =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l))
  const { hostname, port } = new URL(url)
  return { url, host: hostname, port: Number(port), child, stop, stderr: () => stderr, logs }
}

/** Poll until pred() is truthy (or fail after ms). */
export async function until(pred, ms, what) {
  const end = Date.now() + ms
  while (!pred()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

export const post = (url, body, headers = {}) =>
  fetch(`${url}/api/v1/submit`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } })

/** One request with full control of the headers (Host, Origin): {status, headers, body, json}. */
export function request(svc, { method = 'GET', path: p = '/api/v1/health', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: svc.host, port: svc.port, method, path: p, headers, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (text += c))
      res.on('end', () => {
        let json
        try {
          json = JSON.parse(text)
        } catch {}
        resolve({ status: res.statusCode, headers: res.headers, body: text, json })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * A raw TCP client: write `text`, collect what comes back. `done` resolves
 * when the server closes the connection: {data, ms (since connect), status}.
 */
export function raw(svc, text = '') {
  const sock = net.connect(svc.port, svc.host)
  const t0 = Date.now()
  let data = ''
  sock.setEncoding('latin1')
  sock.on('data', (c) => (data += c))
  sock.on('error', () => {})
  if (text) sock.write(text)
  const done = new Promise((resolve) => sock.on('close', () => resolve({ data, ms: Date.now() - t0, status: Number(/^HTTP\/1\.1 (\d+)/.exec(data)?.[1]) || null })))
  return { sock, done, data: () => data }
}

/** Polls (up to ~2 s) until a new TCP connection to the service is refused. */
export async function refusesConnections(svc) {
  for (let i = 0; i < 100; i++) {
    const refused = await new Promise((r) => {
      const s = net.connect(svc.port, svc.host)
      s.on('connect', () => (s.destroy(), r(false)))
      s.on('error', (e) => r(e.code === 'ECONNREFUSED'))
    })
    if (refused) return true
    await sleep(20)
  }
  return false
}
