// Benchmark (not a test): echo jobs/s through submit() from JS, sequential
// and with 64 in flight, next to the old pattern — spawning a process per
// job that echoes the same JSON — measured in the same run.
//
//   node bench/submit.mjs [--seconds 3] [--json]
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import os from 'node:os'
import { existsSync } from 'node:fs'

const require = createRequire(import.meta.url)
// CUDA_ENGINE_ADDON: another build's index.js, for before/after runs in one session.
const { submit } = require(process.env.CUDA_ENGINE_ADDON || '../index.js')

const args = process.argv.slice(2)
const seconds = Number(args[args.indexOf('--seconds') + 1]) || 3
const asJson = args.includes('--json')
const envelope = { type: 'echo', payload: { text: 'hello world', n: 1 } }
const b64Envelope = { type: 'echo', payload_b64: Buffer.from(JSON.stringify(envelope.payload)).toString('base64') }

/** Warm up (JIT, allocator), then the median of three timed windows. */
async function timed(label, run, windows = 3) {
  await run(1)
  const rates = []
  for (let i = 0; i < windows; i++) {
    const { jobs, elapsed } = await run(seconds)
    rates.push(jobs / elapsed)
  }
  rates.sort((a, b) => a - b)
  return { label, windows, jobs_per_s: rates[Math.floor(rates.length / 2)], min: rates[0], max: rates[rates.length - 1] }
}

function sequential(env) {
  return async (secs) => {
    const t0 = performance.now()
    let jobs = 0
    while (performance.now() - t0 < secs * 1e3) {
      for (let i = 0; i < 100; i++) await submit(env)
      jobs += 100
    }
    return { jobs, elapsed: (performance.now() - t0) / 1e3 }
  }
}

function inFlight(env, depth) {
  return async (secs) => {
    const t0 = performance.now()
    const deadline = t0 + secs * 1e3
    let jobs = 0
    async function lane() {
      while (performance.now() < deadline) {
        for (let i = 0; i < 50; i++) await submit(env)
        jobs += 50
      }
    }
    await Promise.all(Array.from({ length: depth }, lane))
    return { jobs, elapsed: (performance.now() - t0) / 1e3 }
  }
}

/** The old pattern: one process per job, the whole stdout read at exit. */
function spawnPerJob(command, args, depth) {
  const one = () =>
    new Promise((resolve, reject) => {
      const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] })
      let out = ''
      child.stdout.on('data', (c) => (out += c))
      child.on('error', reject)
      child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`exit ${code}`))))
      child.stdin.end(JSON.stringify(command === 'cat' ? envelope : { type: 'echo', payload: envelope.payload }))
    })
  return async (secs) => {
    const t0 = performance.now()
    const deadline = t0 + secs * 1e3
    let jobs = 0
    async function lane() {
      while (performance.now() < deadline) {
        await one()
        jobs++
      }
    }
    await Promise.all(Array.from({ length: depth }, lane))
    return { jobs, elapsed: (performance.now() - t0) / 1e3 }
  }
}

const results = []
results.push(await timed('submit echo, sequential', sequential(envelope)))
results.push(await timed('submit echo, 64 in flight', inFlight(envelope, 64)))
results.push(await timed('submit echo payload_b64, 64 in flight', inFlight(b64Envelope, 64)))
const cores = os.availableParallelism()
// The cheapest possible process per job (`cat` echoes stdin), then the real
// cuda-worker in its legacy one-shot mode when it is built.
results.push(await timed('spawn-per-job `cat`, 1 at a time', spawnPerJob('cat', [], 1), 1))
results.push(await timed(`spawn-per-job \`cat\`, ${cores} in flight`, spawnPerJob('cat', [], cores), 1))
const worker = new URL('../target/release/cuda-worker', import.meta.url).pathname
if (existsSync(worker)) {
  results.push(await timed(`spawn-per-job cuda-worker one-shot, ${cores} in flight`, spawnPerJob(worker, [], cores), 1))
}

const spawnBest = Math.max(...results.filter((r) => r.label.startsWith('spawn')).map((r) => r.jobs_per_s))
const inflight = results[1].jobs_per_s
const summary = {
  machine: `${os.cpus()[0].model}, ${os.availableParallelism()} cores`,
  node: process.version,
  results: results.map((r) => ({ ...r, jobs_per_s: Math.round(r.jobs_per_s), min: Math.round(r.min), max: Math.round(r.max) })),
  ratio_inflight_vs_spawn: Math.round(inflight / spawnBest),
}
if (asJson) console.log(JSON.stringify(summary, null, 2))
else {
  console.log(summary.machine, summary.node)
  for (const r of summary.results) {
    console.log(`${r.label.padEnd(55)} ${String(r.jobs_per_s).padStart(9)} jobs/s  (min ${r.min}, max ${r.max})`)
  }
  console.log(`submit (64 in flight) / best spawn-per-job: ${summary.ratio_inflight_vs_spawn}x`)
}
