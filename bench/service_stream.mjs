// A large embed through the HTTP service, streamed (NDJSON) and not:
// wall time, progress lines seen by the client, and the service's peak RSS
// (VmHWM; a fresh service process per form, so each peak is its own).
//
//   node bench/service_stream.mjs [--texts 20000] [--format float|base64] [--options JSON]
//
// docs/service.md "Streaming" reports its figures.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

const args = process.argv.slice(2)
const arg = (name, def) => {
  const i = args.indexOf(name)
  return i === -1 ? def : args[i + 1]
}
const N = Number(arg('--texts', '20000'))
const FORMAT = arg('--format', 'float')
const OPTIONS = arg('--options', '{}')
const BIN = fileURLToPath(new URL('../bin/cuda-service.mjs', import.meta.url))
const WORDS = 'the a quick brown fox jumps over lazy dog river mountain city music science data network model search query answer'.split(' ')
// Deterministic sentences of 8-24 words.
let seed = 7
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
const input = Array.from({ length: N }, (_, i) => `${i} ${Array.from({ length: 8 + Math.floor(rnd() * 17) }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(' ')}`)

const kib = (pid, key) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN)

async function start() {
  const child = spawn(process.execPath, [BIN, '--port', '0', '--no-log', '--options', OPTIONS], { stdio: ['ignore', 'pipe', 'inherit'] })
  const url = await new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).once('line', (l) => resolve(JSON.parse(l).listening))
    child.once('exit', (c) => reject(new Error(`service exited ${c}`)))
  })
  const model = (await (await fetch(`${url}/v1/models`)).json()).data[0].id
  // Warm the model (first pass), then note the resident size before the big call.
  await fetch(`${url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, input: ['warm up'] }) })
  return { child, url, model, rssBefore: kib(child.pid, 'VmRSS') }
}

async function run(stream) {
  const { child, url, model, rssBefore } = await start()
  const t0 = performance.now()
  const res = await fetch(`${url}/v1/embeddings${stream ? '?stream=1' : ''}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, input, encoding_format: FORMAT }),
  })
  let embeddings = 0
  const progress = []
  let firstMs = null
  if (stream) {
    // Read line by line as it arrives: the client never holds the whole reply either.
    const decoder = new TextDecoder()
    let rest = ''
    for await (const chunk of res.body) {
      firstMs ??= performance.now() - t0
      rest += decoder.decode(chunk, { stream: true })
      let nl
      while ((nl = rest.indexOf('\n')) !== -1) {
        const line = JSON.parse(rest.slice(0, nl))
        rest = rest.slice(nl + 1)
        if (line.object === 'embedding') embeddings++
        else if (line.object === 'progress') progress.push({ done: line.done, ms: Math.round(performance.now() - t0) })
        else if (line.object === 'error') throw new Error(JSON.stringify(line.error))
      }
    }
  } else {
    const body = await res.json()
    firstMs = performance.now() - t0
    embeddings = body.data.length
  }
  const ms = performance.now() - t0
  const peak = kib(child.pid, 'VmHWM')
  child.kill('SIGTERM')
  await new Promise((r) => child.once('exit', r))
  if (embeddings !== N) throw new Error(`got ${embeddings} embeddings, want ${N}`)
  return { stream, ms: Math.round(ms), first_byte_ms: Math.round(firstMs), texts_per_s: Math.round((N / ms) * 1000), progress_lines: progress.length, first_progress_ms: progress[0]?.ms ?? null, rss_before_mb: +(rssBefore / 1024).toFixed(1), peak_rss_mb: +(peak / 1024).toFixed(1) }
}

const rows = [await run(false), await run(true)]
console.log(JSON.stringify({ texts: N, format: FORMAT, node: process.version, rows }, null, 1))
