// How long one call holds the event loop (issue 10 item 10): the
// synchronous part of `submit` / `embed` / `infer`, which reads the
// arguments on the JS thread, for the largest inputs each default limit
// admits. Target: ≤ 100 ms for every input within the defaults.
//
//   node --max-old-space-size=8000 bench/event_loop.mjs [rounds] [MiB]
//
// The worst of `rounds` (default 3) per input is printed as JSON lines, then
// a summary. Runs on the CPU backend with the repo's test model. `MiB`
// (default: the default maxEnvelopeBytes, 16) sizes the whole-copy inputs;
// with a size over the default the engine is opened with that limit. Between
// rounds the process waits until it is idle (no CPU used for 50 ms), so
// that a previous job still tokenizing on the runtime is not billed to the
// next call. `EVENT_LOOP_CASES=strings,numbers` runs only the inputs whose
// name contains one of the words; `CUDA_ENGINE_ADDON=path.node` times
// another build.
import { createRequire } from 'node:module'
import path from 'node:path'

const require = createRequire(import.meta.url)
const root = path.resolve(import.meta.dirname, '..')
const m = require(process.env.CUDA_ENGINE_ADDON || path.join(root, 'index.js'))
process.env.CUDA_ENGINE_MODEL ||= path.join(root, 'models/all-MiniLM-L6-v2')
const rounds = Number(process.argv[2] || 3)

const names = m.optionNames()
if (!names.engine.includes('maxPayloadValues')) throw new Error('this build has no maxPayloadValues')
const V = 50_000 // default maxPayloadValues
const DEFAULT_MIB = 16 // default maxEnvelopeBytes
const MIB = Number(process.argv[3] || DEFAULT_MIB)
const B = MIB * 1024 * 1024
const engine = MIB > DEFAULT_MIB ? await m.Engine.open({ maxEnvelopeBytes: B }) : m

// [name, make the input (not timed), call with it (timed up to the return)]
const cases = [
  // Value-by-value reads, each at (just under) the values limit.
  ['submit: payload of V numbers', () => ({ type: 'echo', payload: new Array(V - 2).fill(1.5) }), (x) => m.submit(x)],
  ['submit: payload of V holes', () => ({ type: 'echo', payload: new Array(V - 2) }), (x) => m.submit(x)],
  ['submit: V/3 objects {a:i}', () => ({ type: 'echo', payload: Array.from({ length: Math.floor(V / 3) - 1 }, (_, i) => ({ a: i })) }), (x) => m.submit(x)],
  ['submit: V/2 getter properties', () => {
    const o = {}
    for (let i = 0; i < V / 2 - 2; i++) Object.defineProperty(o, 'k' + i, { get: () => i, enumerable: true })
    return { type: 'echo', payload: o }
  }, (x) => m.submit(x)],
  // Concatenated strings: V8 flattens each one when it is first read (any
  // reader pays that: a copy and the scavenges it triggers), so the worst
  // round is the first.
  ['submit: V strings of 300 chars', () => ({ type: 'echo', payload: Array.from({ length: V - 2 }, (_, i) => 'y'.repeat(300) + i) }), (x) => m.submit(x)],
  // The same strings already flat, as JSON.parse or a network read makes them.
  ['submit: V flat strings of 300 chars', () => ({ type: 'echo', payload: JSON.parse(JSON.stringify(Array.from({ length: V - 2 }, (_, i) => 'y'.repeat(300) + i))) }), (x) => m.submit(x)],
  ['infer: data as a plain array of V', () => ({ inputs: [{ name: 'input_ids', shape: [1, V - 10], datatype: 'INT64', data: new Array(V - 10).fill(101) }] }), (x) => m.infer(x)],
  // Refused inputs: the check comes before the walk.
  ['submit: new Array(6e7) (refused)', () => ({ type: 'echo', payload: new Array(6e7) }), (x) => m.submit(x)],
  ['embed: new Array(2**32-1) (refused)', () => new Array(2 ** 32 - 1), (x) => m.embed(x)],
  // Whole copies, at the byte limit.
  [`submit: string envelope of ${MIB} MiB`, () => JSON.stringify({ type: 'echo', payload: 'y'.repeat(B - 40) }), (x) => engine.submit(x)],
  [`submit: string envelope of ${MIB} MiB, CJK`, () => JSON.stringify({ type: 'echo', payload: '日'.repeat(Math.floor(B / 3) - 40) }), (x) => engine.submit(x)],
  [`submit: payload_b64 of ${MIB} MiB`, () => ({ type: 'echo', payload_b64: Buffer.alloc(Math.floor(B / 4) * 3 - 3, 7).toString('base64') }), (x) => engine.submit(x)],
  [`submit: bytes of ${MIB} MiB`, () => ({ type: 'echo', payload: Buffer.alloc(B - 1, 7) }), (x) => engine.submit(x)],
  [`embed: ${Math.min(16384, B / 4096)} texts of 4 KiB (${MIB} MiB)`,
    () => Array.from({ length: Math.min(16384, B / 4096) }, (_, i) => 'word '.repeat(800) + i), (x) => engine.embed(x, { timeoutMs: 1 })],
]

// Wait until this process used no CPU for 50 ms (the runtime's threads idle).
async function idle() {
  for (let i = 0; i < 400; i++) {
    const a = process.cpuUsage()
    await new Promise((resolve) => setTimeout(resolve, 50))
    const d = process.cpuUsage(a)
    if (d.user + d.system < 5000) return
  }
}

const only = (process.env.EVENT_LOOP_CASES || '').split(',').filter(Boolean)
const rows = []
for (const [name, make, call] of cases) {
  if (only.length && !only.some((w) => name.includes(w))) continue
  let worst = 0
  const times = []
  let outcome = 'ok'
  const input = make()
  for (let r = 0; r < rounds; r++) {
    const t = performance.now()
    const p = call(input)
    times.push(performance.now() - t)
    worst = Math.max(worst, times.at(-1))
    await p.then(() => {}, (e) => { outcome = e.code })
    // Let the heap and the runtime settle so one call's work is not billed to the next.
    await idle()
  }
  times.sort((a, b) => a - b)
  const median = times[Math.floor(times.length / 2)]
  const row = { input: name, worst_block_ms: +worst.toFixed(1), median_block_ms: +median.toFixed(1), outcome }
  rows.push(row)
  console.log(JSON.stringify(row))
}
const worst = rows.reduce((a, b) => (b.worst_block_ms > a.worst_block_ms ? b : a))
console.log(JSON.stringify({ summary: 'worst event-loop block within the defaults', ...worst, target_ms: 100, met: worst.worst_block_ms <= 100 }))
