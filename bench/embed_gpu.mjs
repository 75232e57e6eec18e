// GPU embedding benchmark from JS (run on the GPU machine through
// bench/embed_gpu.sh, which also runs sentence-transformers in the same run).
//
//   node bench/embed_gpu.mjs --model DIR --corpus corpus.txt --short short.txt
//        [--dtype fp16|bf16|fp32] [--json out.json]
//
// Measures: throughput with sequential calls of 32/128/512 texts (what
// sentence-transformers' encode(batch_size=…) does), the whole corpus in one
// call, the whole corpus as 16 concurrent calls, single-sentence latency
// (p50/p99 of 300 short sentences, one awaited call each), and the GPU
// memory this process holds (nvidia-smi) next to the backend's own account.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'

const require = createRequire(import.meta.url)
const { Engine } = require('../index.js')

const argv = process.argv.slice(2)
const opt = (name, def) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : def)
const model = opt('model', process.env.CUDA_ENGINE_MODEL)
const dtype = opt('dtype', 'fp16')
const read = (f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean)
const lines = read(opt('corpus'))
const short = read(opt('short')).slice(0, 300)
const now = () => performance.now()

function gpuMemMiB() {
  try {
    const out = execFileSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits']).toString()
    const row = out.split('\n').map((l) => l.split(',').map((x) => x.trim())).find((r) => Number(r[0]) === process.pid)
    return row ? Number(row[1]) : null
  } catch {
    return null
  }
}

const tOpen = now()
const engine = await Engine.open({ model, device: 'cuda', dtype, maxTextsPerCall: 100000, maxQueuedTexts: 200000 })
await engine.embed('warm up')
const openMs = now() - tOpen
const res = { dtype, sentences: lines.length, open_and_first_call_ms: openMs }

// Warm-up: every batch shape path and the single-sentence graphs.
await engine.embed(lines.slice(0, 2048))
for (const s of short.slice(0, 100)) await engine.embed(s)

{
  // Latency first, on a fresh heap (a GC pause after the throughput runs
  // would show up as p99 outliers that are not the engine's).
  if (globalThis.gc) globalThis.gc()
  const lat = []
  for (const s of short) {
    const t0 = now()
    await engine.embed(s)
    lat.push(now() - t0)
  }
  lat.sort((a, b) => a - b)
  res.single_ms = { p50: lat[Math.floor(lat.length / 2)], p99: lat[Math.floor(lat.length * 0.99)], min: lat[0], worst5: lat.slice(-5) }
}
for (const bs of [32, 128, 512]) {
  const t0 = now()
  for (let i = 0; i < lines.length; i += bs) await engine.embed(lines.slice(i, i + bs))
  const dt = (now() - t0) / 1e3
  res[`batch_${bs}`] = { sentences_per_s: lines.length / dt }
}
{
  const runs = []
  for (let r = 0; r < 3; r++) {
    const t0 = now()
    const v = await engine.embed(lines)
    runs.push((now() - t0) / 1e3)
    if (v.length !== lines.length || v[0].length !== 384) throw new Error('bad result shape')
  }
  runs.sort((a, b) => a - b)
  res.whole_corpus_one_call = { sentences_per_s: lines.length / runs[1], seconds: runs }
}
{
  const parts = 16
  const per = Math.ceil(lines.length / parts)
  const runs = []
  for (let r = 0; r < 3; r++) {
    const t0 = now()
    await Promise.all(Array.from({ length: parts }, (_, i) => engine.embed(lines.slice(i * per, (i + 1) * per))))
    runs.push((now() - t0) / 1e3)
  }
  runs.sort((a, b) => a - b)
  res.whole_corpus_16_concurrent_calls = { sentences_per_s: lines.length / runs[1], seconds: runs }
}
const h = await engine.health()
res.model = h.model
res.devices = h.devices
res.gpu_memory_process_mib = gpuMemMiB()
console.log(JSON.stringify(res, null, 1))
const out = opt('json')
if (out) fs.writeFileSync(out, JSON.stringify(res, null, 1))
await engine.close()
