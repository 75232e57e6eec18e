// The production orchestrator's job runner on cuda-engine, in place of
// spawning `cuda-worker.exe` once per job and parsing its whole stdout:
//
// - one Engine per process, with a pool of persistent cuda-worker processes
//   (EngineOptions.worker, docs/worker-protocol.md); the worker binary is
//   found by discovery: $CUDA_WORKER_PATH, then the one bundled in the
//   platform package (node_modules/cuda-engine-<platform>/cuda-worker);
// - jobs routed by type: `embed` -> engine.embed, `infer` -> engine.infer
//   (Open Inference Protocol tensors), anything else -> engine.submit with an
//   envelope (`payload` as JSON, or `payload_b64` for bytes); types the
//   engine runs itself (echo, embedding, inference) stay in-process unless
//   the job asks for the worker, other types go to the worker;
// - a timeout per job (`timeoutMs`), errors handled by their stable `.code`
//   (one retry for the codes a restarted worker or a less busy engine can
//   fix), and a drain on SIGTERM (`engine.close({ drainMs })`).
import { Engine } from 'cuda-engine'
import type { CallOptions, EngineOptions, Envelope, ErrorCode, Health, InferRequest } from 'cuda-engine'
import { errorCodes } from 'cuda-engine'

/** A job as the orchestrator's queue hands it over. */
export type Job =
  | { id: string; type: 'embed'; texts: string[]; normalize?: boolean; timeoutMs?: number }
  | { id: string; type: 'infer'; texts: string[]; timeoutMs?: number }
  | EnvelopeJob

/** Any other type: sent as an envelope. Exactly one of `payload`, `bytes`, `payload_b64`. */
export interface EnvelopeJob {
  id: string
  type: string
  /** JSON payload (envelope `payload`). */
  payload?: unknown
  /** Bytes (JSON text or raw): sent base64-encoded as `payload_b64`, as the old cuda-worker.exe command line took them. */
  bytes?: Uint8Array
  /** Base64 exactly as received from upstream (envelope `payload_b64`, checked by the engine). */
  payload_b64?: string
  /** `worker`: run on the worker pool even when the engine could run the type itself. */
  target?: CallOptions['target']
  timeoutMs?: number
}

export type Route = 'embed' | 'infer' | 'submit'

export type JobOutcome =
  | { id: string; type: string; route: Route; ok: true; backend: string; attempts: number; ms: number; result: unknown }
  | {
      id: string
      type: string
      route: Route
      ok: false
      attempts: number
      ms: number
      error: { code: ErrorCode | 'E_UNKNOWN'; http_status: number; retryable: boolean; message: string }
    }

/** Codes worth one more attempt: a worker that died or hung is restarted by the pool, an overload passes. */
const RETRYABLE: ReadonlySet<string> = new Set<ErrorCode>(['E_WORKER_EXIT', 'E_WORKER_PROTOCOL', 'E_OVERLOADED'])
const HTTP_STATUS = new Map<string, number>(errorCodes().map((e) => [e.code, e.http_status]))
const KNOWN_CODES: ReadonlySet<string> = new Set(HTTP_STATUS.keys())

export interface OrchestratorOptions {
  /** Persistent worker processes (default 2). */
  poolSize?: number
  /** Job timeout when the job gives none (default 30 s). */
  timeoutMs?: number
  /** Engine options other than `worker`: `model`, `device`, limits. */
  engine?: Omit<EngineOptions, 'worker'>
}

export class Orchestrator {
  readonly #engine: Engine
  readonly #timeoutMs: number
  /** Where embed / infer run in this process: 'cuda' or 'cpu'. */
  readonly #backend: string
  #closing: Promise<void> | undefined

  private constructor(engine: Engine, timeoutMs: number, backend: string) {
    this.#engine = engine
    this.#timeoutMs = timeoutMs
    this.#backend = backend
  }

  static async open(opts: OrchestratorOptions = {}): Promise<Orchestrator> {
    const engine = await Engine.open({
      ...opts.engine,
      // Started on the first worker job and kept: one process per pool slot,
      // NDJSON requests with ids, restarted (with back-off) if one dies.
      worker: { mode: 'persistent', poolSize: opts.poolSize ?? 2, timeoutMs: 30_000 },
    })
    return new Orchestrator(engine, opts.timeoutMs ?? 30_000, (await engine.health()).backend)
  }

  health(): Promise<Health> {
    return this.#engine.health()
  }

  /** Which engine call runs a job of this type. */
  static route(job: Job): Route {
    return job.type === 'embed' ? 'embed' : job.type === 'infer' ? 'infer' : 'submit'
  }

  /** The envelope of a `submit` job (docs/envelope.md): `payload` for JSON, `payload_b64` for bytes. */
  static envelope(job: EnvelopeJob): Envelope {
    const given = [job.payload !== undefined, job.bytes !== undefined, job.payload_b64 !== undefined].filter(Boolean).length
    if (given > 1) throw Object.assign(new Error(`job ${job.id}: give one of payload, bytes, payload_b64`), { code: 'E_ENVELOPE' })
    if (job.bytes !== undefined) return { id: job.id, type: job.type, payload_b64: Buffer.from(job.bytes).toString('base64') }
    if (job.payload_b64 !== undefined) return { id: job.id, type: job.type, payload_b64: job.payload_b64 }
    return { id: job.id, type: job.type, payload: job.payload ?? null }
  }

  /** Run one job; never rejects: failures come back as `{ ok: false, error: { code, ... } }`. */
  async run(job: Job, signal?: AbortSignal): Promise<JobOutcome> {
    const route = Orchestrator.route(job)
    const t0 = performance.now()
    const ms = () => Math.round((performance.now() - t0) * 10) / 10
    let attempts = 0
    for (;;) {
      attempts++
      try {
        const { backend, result } = await this.#once(job, route, { signal, timeoutMs: job.timeoutMs ?? this.#timeoutMs })
        return { id: job.id, type: job.type, route, ok: true, backend, attempts, ms: ms(), result }
      } catch (err) {
        const code = codeOf(err)
        const retryable = RETRYABLE.has(code)
        if (retryable && attempts < 2 && !this.#closing) continue
        const message = err instanceof Error ? err.message : String(err)
        const http_status = HTTP_STATUS.get(code) ?? 500
        return { id: job.id, type: job.type, route, ok: false, attempts, ms: ms(), error: { code, http_status, retryable, message } }
      }
    }
  }

  async #once(job: Job, route: Route, call: CallOptions): Promise<{ backend: string; result: unknown }> {
    const e = this.#engine
    if (route === 'embed' && 'texts' in job) {
      const vectors = await e.embed(job.texts, { ...call, normalize: 'normalize' in job ? job.normalize : undefined })
      return { backend: this.#backend, result: summarizeVectors(vectors) }
    }
    if (route === 'infer' && 'texts' in job) {
      const request: InferRequest = {
        id: job.id,
        inputs: [{ name: 'text', shape: [job.texts.length], datatype: 'BYTES', data: job.texts }],
        outputs: [{ name: 'sentence_embedding' }],
      }
      const r = await e.infer(request, call)
      return {
        backend: this.#backend,
        result: { model_name: r.model_name, id: r.id, outputs: r.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })) },
      }
    }
    const env = job as EnvelopeJob
    const r = await e.submit(Orchestrator.envelope(env), { ...call, target: env.target ?? 'auto' })
    return { backend: r.backend, result: summarizeResult(r.result) }
  }

  /** SIGTERM: stop admitting (new jobs fail with E_CLOSED), give the jobs in flight `drainMs`, then cancel the rest (E_CANCELLED). */
  shutdown(drainMs = 10_000): Promise<void> {
    this.#closing ??= this.#engine.close({ drainMs })
    return this.#closing
  }

  get closing(): boolean {
    return this.#closing !== undefined
  }
}

function codeOf(err: unknown): ErrorCode | 'E_UNKNOWN' {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined
  return typeof code === 'string' && KNOWN_CODES.has(code) ? (code as ErrorCode) : 'E_UNKNOWN'
}

/** Job results as short JSON: raw bytes (a Buffer) as base64, embedding arrays as their summary. */
function summarizeResult(result: unknown): unknown {
  if (Buffer.isBuffer(result)) return { bytes_b64: result.toString('base64') }
  if (typeof result === 'object' && result !== null && 'embeddings' in result && Array.isArray(result.embeddings)) {
    const { embeddings, ...rest } = result as { embeddings: number[][] }
    return { ...rest, ...summarizeVectors(embeddings.map((v) => Float32Array.from(v))) }
  }
  return result
}

function summarizeVectors(vectors: Float32Array[]): { count: number; dims: number; norm: { min: number; max: number }; head: number[]; cosine01?: number } {
  const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i], 0)
  const round = (x: number) => Math.round(x * 1e4) / 1e4
  const norms = vectors.map((v) => Math.sqrt(dot(v, v)))
  return {
    count: vectors.length,
    dims: vectors[0]?.length ?? 0,
    norm: { min: round(Math.min(...norms)), max: round(Math.max(...norms)) },
    head: Array.from(vectors[0]?.subarray(0, 4) ?? [], round),
    ...(vectors.length > 1 ? { cosine01: round(dot(vectors[0], vectors[1])) } : {}),
  }
}
