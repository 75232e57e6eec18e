// Benchmark (not a test): the cost of `isolation: 'process'`. Throughput of
// `embed` batches (512 texts by default) in-process and through the isolated
// cuda-worker, in the same run, on the same corpus as bench/embed.mjs.
//
//   node bench/isolation.mjs [--sentences 4096] [--batch 512] [--rounds 3]
//                            [--device cpu|cuda|auto] [--dtype fp32|fp16|bf16]
//                            [--model DIR] [--concurrency 1] [--json]
//
// The cuda-worker binary: $CUDA_WORKER_PATH, else target/release/cuda-worker
// (cargo build --release -p cuda-worker). Rounds alternate in-process and
// isolated so that drift (thermal, other load) hits both; the ratio is the
// best isolated round over the best in-process round. Target on the GPU:
// overhead <= 10% for batches of 512.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
if (!process.env.CUDA_WORKER_PATH) process.env.CUDA_WORKER_PATH = path.join(root, 'target/release/cuda-worker')
if (!fs.existsSync(process.env.CUDA_WORKER_PATH)) {
  console.error(`no cuda-worker at ${process.env.CUDA_WORKER_PATH}: run cargo build --release -p cuda-worker`)
  process.exit(2)
}
const { Engine } = require(process.env.CUDA_ENGINE_ADDON || '../index.js')

const argv = process.argv.slice(2)
const opt = (name, def) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : def)
const sentences = Number(opt('sentences', 4096))
const batch = Number(opt('batch', 512))
const rounds = Number(opt('rounds', 3))
const concurrency = Number(opt('concurrency', 1))
const device = opt('device', 'cpu')
const dtype = opt('dtype', device === 'cpu' ? 'fp32' : 'fp16')
const model = path.resolve(opt('model', process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')))
const out = path.join(root, 'bench/out')
fs.mkdirSync(out, { recursive: true })

// The corpus of bench/embed.mjs (bench/baseline/make_corpus.py).
const file = path.join(out, `corpus-${sentences}.txt`)
if (!fs.existsSync(file)) {
  const text = execFileSync(opt('python', 'python3'), [path.join(root, 'bench/baseline/make_corpus.py'), path.join(model, 'vocab.txt'), String(sentences), '0'], { maxBuffer: 256 << 20 })
  fs.writeFileSync(file, text)
}
const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)
const batches = []
for (let i = 0; i < lines.length; i += batch) batches.push(lines.slice(i, i + batch))

/** Sentences per second over the whole corpus, `concurrency` batches in flight. */
async function run(engine) {
  const t0 = performance.now()
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < batches.length) await engine.embed(batches[next++])
  }))
  return lines.length / ((performance.now() - t0) / 1e3)
}

const t0 = performance.now()
const local = await Engine.open({ model, device, dtype })
await local.embed(batches[0]) // load + warm up
const localStart = performance.now() - t0
const t1 = performance.now()
const isolated = await Engine.open({ model, device, dtype, isolation: 'process' })
await isolated.embed(batches[0])
const isolatedStart = performance.now() - t1

// Same vectors both ways (a bench that measured wrong answers would be moot).
{
  const [a, b] = [await local.embed(batches[0].slice(0, 32)), await isolated.embed(batches[0].slice(0, 32))]
  let worst = 0
  a.forEach((v, i) => v.forEach((x, j) => (worst = Math.max(worst, Math.abs(x - b[i][j])))))
  if (worst > 1e-6) throw new Error(`isolated vectors differ from in-process ones by ${worst}`)
}

const res = { in_process: [], process: [] }
for (let r = 0; r < rounds; r++) {
  res.in_process.push(await run(local))
  res.process.push(await run(isolated))
}
const best = (xs) => Math.max(...xs)
const h = await isolated.health()
const result = {
  machine: `${os.cpus()[0].model}, ${os.availableParallelism()} cores`,
  backend: h.backend,
  device,
  dtype,
  sentences: lines.length,
  batch,
  concurrency,
  rounds,
  start_ms: { in_process: Math.round(localStart), process: Math.round(isolatedStart) },
  sentences_per_s: {
    in_process: res.in_process.map(Math.round),
    process: res.process.map(Math.round),
  },
  ratio_process_over_in_process: best(res.process) / best(res.in_process),
  overhead_percent: 100 * (1 - best(res.process) / best(res.in_process)),
  isolated_pid: h.isolation.pid,
}
await local.close()
await isolated.close()
if (argv.includes('--json')) console.log(JSON.stringify(result))
else {
  console.log(`${result.machine}; backend ${result.backend} (${dtype}); ${lines.length} sentences in batches of ${batch}, ${concurrency} in flight, ${rounds} rounds`)
  console.log(`start to first batch: in-process ${result.start_ms.in_process} ms, isolated ${result.start_ms.process} ms`)
  console.log(`in-process : ${result.sentences_per_s.in_process.join(', ')} sentences/s`)
  console.log(`isolated   : ${result.sentences_per_s.process.join(', ')} sentences/s`)
  console.log(`ratio (best isolated / best in-process): ${result.ratio_process_over_in_process.toFixed(4)}  (overhead ${result.overhead_percent.toFixed(2)}%)`)
}
