// Cold start: a new Node process to its first embedding (issue 14), with an
// empty kernel cache, with a warm one, and with the cache off; the phases
// from health().compute.startup_ms. Each row is a fresh process.
//
//   node bench/cold_start.mjs --model DIR [--runs 5] [--addon PATH] [--json FILE]
//
// --addon picks another build of the addon (a before/after in one run).
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const model = opt('--model', process.env.CUDA_ENGINE_MODEL)
const runs = Number(opt('--runs', 5))
const addon = resolve(opt('--addon', new URL('../index.js', import.meta.url).pathname))
const jsonOut = opt('--json')
if (!model) {
  console.error('usage: node bench/cold_start.mjs --model DIR [--runs N] [--addon PATH] [--json FILE]')
  process.exit(2)
}

// The child: everything is timed from the process's own start
// (performance.now() counts from it), so Node's start-up is included.
const child = `
const t0 = performance.now()
const m = require(${JSON.stringify(addon)})
const t1 = performance.now()
;(async () => {
  const e = await m.Engine.open({ model: ${JSON.stringify(model)}, device: 'cuda', dtype: 'fp16' })
  const t2 = performance.now()
  await e.embed(['the first sentence of a new process'])
  const t3 = performance.now()
  const h = await e.health()
  console.log(JSON.stringify({ node_start_ms: t0, require_ms: t1 - t0, open_ms: t2 - t1, first_embed_ms: t3 - t2,
    to_first_embedding_ms: t3, startup_ms: h.compute && h.compute.startup_ms }))
  await e.close()
})().catch((err) => { console.error(err); process.exit(1) })
`

function once(env) {
  const t = process.hrtime.bigint()
  const r = spawnSync(process.execPath, ['-e', child], { env: { ...process.env, ...env }, encoding: 'utf8' })
  const wall = Number(process.hrtime.bigint() - t) / 1e6
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`)
  return { ...JSON.parse(r.stdout.trim().split('\n').pop()), spawn_to_exit_ms: wall }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const rows = {}
const cache = mkdtempSync(join(tmpdir(), 'ce-kernel-cache-'))
try {
  rows.empty_cache = []
  for (let i = 0; i < runs; i++) {
    rmSync(cache, { recursive: true, force: true })
    rows.empty_cache.push(once({ CUDA_ENGINE_KERNEL_CACHE: cache }))
  }
  rows.warm_cache = []
  for (let i = 0; i < runs; i++) rows.warm_cache.push(once({ CUDA_ENGINE_KERNEL_CACHE: cache }))
  rows.cache_off = []
  for (let i = 0; i < runs; i++) rows.cache_off.push(once({ CUDA_ENGINE_KERNEL_CACHE: 'off' }))
} finally {
  rmSync(cache, { recursive: true, force: true })
}

const summary = {}
for (const [name, rs] of Object.entries(rows)) {
  const phases = {}
  for (const k of Object.keys(rs[0].startup_ms || {})) {
    if (typeof rs[0].startup_ms[k] === 'number') phases[k] = +median(rs.map((r) => r.startup_ms[k])).toFixed(1)
  }
  summary[name] = {
    to_first_embedding_ms: +median(rs.map((r) => r.to_first_embedding_ms)).toFixed(1),
    node_start_ms: +median(rs.map((r) => r.node_start_ms)).toFixed(1),
    require_ms: +median(rs.map((r) => r.require_ms)).toFixed(1),
    open_ms: +median(rs.map((r) => r.open_ms)).toFixed(1),
    first_embed_ms: +median(rs.map((r) => r.first_embed_ms)).toFixed(1),
    kernel_cache: rs.map((r) => r.startup_ms && r.startup_ms.kernel_cache).join(','),
    phases_ms: phases,
  }
}
console.log(JSON.stringify({ addon, runs, summary }, null, 1))
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ addon, runs, summary, rows }, null, 1))
