// Runs one job of each kind the orchestrator handles and prints one JSON line
// per job (and a few `event` lines), then drains on SIGTERM and exits 0.
//   npm run build && node dist/main.js
// The model: $CUDA_ENGINE_MODEL, else ./models/all-MiniLM-L6-v2, else the
// Hugging Face cache (docs/model.md). The worker: $CUDA_WORKER_PATH, else the
// cuda-worker of the installed platform package.
import { Orchestrator } from './orchestrator.js'
import type { Job, JobOutcome } from './orchestrator.js'

const print = (line: object) => process.stdout.write(JSON.stringify(line) + '\n')

const orch = await Orchestrator.open({ poolSize: 2, timeoutMs: 30_000 })

// What a deployment does: on SIGTERM stop taking jobs and drain. With the
// engine closed nothing keeps the event loop alive, so the process then exits
// by itself with status 0 once the job source (a queue, stdin) has stopped too.
const DRAIN_MS = 10_000
let sigterm: (() => void) | undefined
const sigtermSeen = new Promise<void>((resolve) => (sigterm = resolve))
process.once('SIGTERM', () => {
  const t0 = performance.now()
  print({ event: 'sigterm', drain_ms: DRAIN_MS })
  sigterm?.()
  void orch.shutdown(DRAIN_MS).then(() => print({ event: 'closed', took_ms: Math.round(performance.now() - t0) }))
})

const h = await orch.health()
print({
  event: 'ready',
  status: h.status,
  backend: h.backend,
  model: h.model?.name ?? null,
  worker: { mode: h.worker.mode, source: h.worker.source, path: h.worker.path, running: h.worker.running },
})

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v))
const jobs: Job[] = [
  // engine.embed: two texts -> Float32Array[] (summarized: dims, norms, cosine)
  { id: 'embed-1', type: 'embed', texts: ['The cat sits on the mat.', 'A feline rests on a rug.'] },
  // engine.infer: Open Inference Protocol tensors (BYTES [1] in, FP32 [1, 384] out)
  { id: 'infer-1', type: 'infer', texts: ['How do I reset my password?'] },
  // engine.submit, JSON payload, run in-process
  { id: 'submit-json', type: 'embedding', payload: { text: 'hello world' } },
  // engine.submit, payload_b64 of JSON bytes, on the persistent worker
  { id: 'worker-b64', type: 'echo', bytes: json({ frame: 7, op: 'resize' }), target: 'worker' },
  // engine.submit, raw bytes (not JSON): a binary frame to the worker and back
  { id: 'worker-raw', type: 'echo', bytes: Uint8Array.of(0, 255, 1, 2), target: 'worker' },
  // a type no runner knows: the worker answers E_UNKNOWN_TYPE (404)
  { id: 'unknown-type', type: 'resize-image', payload: { w: 64, h: 64 } },
  // upstream gave broken base64: E_BAD_BASE64 (400), naming the offset
  { id: 'bad-b64', type: 'echo', payload_b64: 'eyJh@@@' },
  // far too little time for 256 long texts: E_TIMEOUT (504)
  { id: 'timeout', type: 'embed', texts: Array.from({ length: 256 }, (_, i) => `text ${i} `.repeat(40)), timeoutMs: 1 },
]

// The orchestrator runs its jobs concurrently; the lines come out in job order.
const outcomes: JobOutcome[] = await Promise.all(jobs.map((job) => orch.run(job)))
for (const o of outcomes) print(o)

// The drain: a job is in flight when SIGTERM arrives; it finishes, a job
// submitted after it is refused with E_CLOSED (a queue would hand it back).
let settled = false
const inFlight = orch
  .run({ id: 'during-drain', type: 'embed', texts: Array.from({ length: 64 }, (_, i) => `drain ${i} `.repeat(8)) })
  .finally(() => (settled = true))
// The job is admitted when run() calls the engine, synchronously, so a
// close() after this line drains it (docs/design.md "Close"); waiting until
// health() counts it also shows that count.
while (!settled && (await orch.health()).queue.in_flight === 0) await new Promise((r) => setTimeout(r, 1))
process.kill(process.pid, 'SIGTERM')
await sigtermSeen
const late = await orch.run({ id: 'after-sigterm', type: 'echo', payload: { too: 'late' } })
print(await inFlight)
print(late)
await orch.shutdown()
