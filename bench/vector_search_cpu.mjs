// The CPU vector index against NumPy's brute force (`X @ q.T` + argpartition)
// on the same data, same machine, same run: `node bench/vector_search_cpu.mjs
// [N] [dims]` (defaults 100,000 × 384, fp32 and fp16 storage, k = 10,
// B = 1 and 64). Times are medians of 20 after 3 warm-ups, from JS (the
// index) and from Python (NumPy, `bench/vector_search_cpu.py`).
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { VectorIndex } = require('../index.js')
const here = path.dirname(fileURLToPath(import.meta.url))
const N = Number(process.argv[2] ?? 100_000)
const D = Number(process.argv[3] ?? 384)
const K = 10

function randomUnit(n, seed) {
  let x = seed >>> 0 || 1
  const out = new Float32Array(n * D)
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    out[i] = (x / 2 ** 32) * 2 - 1
  }
  for (let r = 0; r < n; r++) {
    let s = 0
    for (let j = 0; j < D; j++) s += out[r * D + j] ** 2
    s = Math.sqrt(s)
    for (let j = 0; j < D; j++) out[r * D + j] /= s
  }
  return out
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
async function time(fn) {
  for (let i = 0; i < 3; i++) await fn()
  const t = []
  for (let i = 0; i < 20; i++) {
    const t0 = process.hrtime.bigint()
    await fn()
    t.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  return median(t)
}

const data = randomUnit(N, 1)
const queries = randomUnit(64, 2)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsbench-'))
fs.writeFileSync(path.join(dir, 'x.f32'), Buffer.from(data.buffer))
fs.writeFileSync(path.join(dir, 'q.f32'), Buffer.from(queries.buffer))
const numpy = JSON.parse(execFileSync('python3', [path.join(here, 'vector_search_cpu.py'), dir, String(N), String(D), String(K)], { encoding: 'utf8' }))
fs.rmSync(dir, { recursive: true, force: true })

const rows = []
for (const dtype of ['fp32', 'fp16']) {
  const index = await VectorIndex.create({ dims: D, metric: 'ip', dtype, device: 'cpu', capacity: N })
  const ids = Array.from({ length: N }, (_, i) => i)
  for (let i = 0; i < N; i += 50_000) await index.upsert(ids.slice(i, i + 50_000), data.subarray(i * D, Math.min(N, i + 50_000) * D))
  for (const B of [1, 64]) {
    const q = queries.subarray(0, B * D)
    const ms = await time(() => index.search(q, { k: K }))
    const base = numpy[`b${B}`]
    rows.push({ dtype, B, engine_ms: +ms.toFixed(3), numpy_ms: +base.toFixed(3), ratio_numpy_over_engine: +(base / ms).toFixed(2) })
  }
}
console.log(JSON.stringify({ machine: `${os.cpus().length} cpus, ${os.cpus()[0]?.model}`, N, dims: D, k: K, numpy_version: numpy.version, rows }, null, 1))
