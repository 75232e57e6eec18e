// One query from JS end to end on a GPU index (issue 12's "from JS" row):
// `node bench/vector_search_js.mjs [N] [--device cuda|cpu] [--dtype fp16]`
// upserts N random unit vectors (d = 384), then times 500 single-query
// `index.search(q, { k: 10 })` calls one after another (after 50 warm-up
// calls) and prints p50 / p99 in ms, with the in-process search time of a
// 64-query batch for reference. Absolute times only from the GPU machine.
import os from 'node:os'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { VectorIndex } = require('../index.js')
const args = process.argv.slice(2)
const flag = (name, def) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : def
}
const N = Number(args.find((a) => /^\d+$/.test(a)) ?? 1_000_000)
const device = flag('--device', 'cuda')
const dtype = flag('--dtype', 'fp16')
const D = 384
const K = 10

let seed = 12345
function randomUnit(n) {
  const out = new Float32Array(n * D)
  for (let r = 0; r < n; r++) {
    let s = 0
    for (let j = 0; j < D; j++) {
      seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0
      const v = (seed / 2 ** 32) * 2 - 1
      out[r * D + j] = v
      s += v * v
    }
    s = Math.sqrt(s)
    for (let j = 0; j < D; j++) out[r * D + j] /= s
  }
  return out
}

const index = await VectorIndex.create({ dims: D, metric: 'ip', dtype, device, capacity: N })
const t0 = performance.now()
const CHUNK = 100_000
for (let i = 0; i < N; i += CHUNK) {
  const n = Math.min(CHUNK, N - i)
  await index.upsert(BigUint64Array.from({ length: n }, (_, j) => BigInt(i + j)), randomUnit(n))
}
const upsertS = (performance.now() - t0) / 1e3
const q = randomUnit(64)
const one = q.subarray(0, D)
for (let i = 0; i < 50; i++) await index.search(one, { k: K })
const times = []
for (let i = 0; i < 500; i++) {
  const a = process.hrtime.bigint()
  await index.search(one, { k: K })
  times.push(Number(process.hrtime.bigint() - a) / 1e6)
}
times.sort((a, b) => a - b)
const batch = []
for (let i = 0; i < 20; i++) {
  const a = process.hrtime.bigint()
  await index.search(q, { k: K })
  batch.push(Number(process.hrtime.bigint() - a) / 1e6)
}
batch.sort((a, b) => a - b)
console.log(JSON.stringify({
  machine: `${os.cpus().length} cpus`,
  device: index.device,
  dtype,
  N,
  dims: D,
  k: K,
  upsert_s: +upsertS.toFixed(2),
  single_query_ms: { p50: +times[250].toFixed(3), p99: +times[495].toFixed(3), min: +times[0].toFixed(3) },
  batch64_ms_p50: +batch[10].toFixed(3),
  info: await index.info(),
}))
