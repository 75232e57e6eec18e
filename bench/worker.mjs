// Benchmark (not a test): echo jobs/s through submit({target:'worker'}) to
// one persistent cuda-worker (64 in flight) next to one-shot spawn-per-job
// (the legacy protocol), in the same run.
//
//   node bench/worker.mjs [--seconds 3] [--worker target/release/cuda-worker]
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
const { Engine } = require('../index.js')
const argv = process.argv.slice(2)
const opt = (name, def) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : def)
const seconds = Number(opt('seconds', 3))
const worker = path.resolve(opt('worker', new URL('../target/release/cuda-worker', import.meta.url).pathname))
const envelope = { type: 'echo', payload: { text: 'hello world', n: 1 } }

async function rate(engine, depth, secs) {
  const t0 = performance.now()
  const deadline = t0 + secs * 1e3
  let jobs = 0
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (performance.now() < deadline) {
        await engine.submit(envelope, { target: 'worker' })
        jobs++
      }
    }),
  )
  return jobs / ((performance.now() - t0) / 1e3)
}

async function measure(label, workerOptions, depth) {
  const engine = await Engine.open({ worker: { path: worker, ...workerOptions } })
  try {
    await rate(engine, depth, 0.5) // warm up (starts the persistent process)
    const rates = []
    for (let i = 0; i < 3; i++) rates.push(await rate(engine, depth, seconds))
    rates.sort((a, b) => a - b)
    const h = await engine.health()
    return { label, in_flight: depth, jobs_per_s: Math.round(rates[1]), min: Math.round(rates[0]), max: Math.round(rates[2]), restarts: h.worker.restarts }
  } finally {
    await engine.close()
  }
}

const cores = os.availableParallelism()
const results = [
  await measure('persistent, 1 process', { mode: 'persistent' }, 64),
  await measure(`persistent, ${cores} processes`, { mode: 'persistent', poolSize: cores }, 64),
  await measure('one-shot spawn per job', { mode: 'oneshot' }, cores),
  await measure('one-shot spawn per job', { mode: 'oneshot' }, 64),
]
console.log(`${os.cpus()[0].model}, ${cores} cores, ${process.version}`)
for (const r of results) console.log(`${r.label.padEnd(34)} ${String(r.in_flight).padStart(3)} in flight ${String(r.jobs_per_s).padStart(9)} jobs/s (min ${r.min}, max ${r.max})`)
console.log(`persistent / one-shot: ${Math.round(results[0].jobs_per_s / Math.max(results[2].jobs_per_s, results[3].jobs_per_s))}x`)
