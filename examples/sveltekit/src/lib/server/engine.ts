// One Engine per server process, opened on first use (or at start-up by
// hooks.server.ts), with a vector index over the bundled sentences.
//
// The model: $CUDA_ENGINE_MODEL (a model directory or a Hugging Face id such
// as sentence-transformers/all-MiniLM-L6-v2) when set, else what
// Engine.open() discovers by itself: ./models/all-MiniLM-L6-v2 under the
// working directory, then the Hugging Face cache (docs/model.md).
import { env } from '$env/dynamic/private'
import { Engine } from 'cuda-engine'
import type { EngineOptions, Health, VectorIndex } from 'cuda-engine'
import sentences from './sentences.json'

export const INDEX = 'sentences'

export interface Hit {
  rank: number
  id: string
  text: string
  score: number
}

interface Ready {
  engine: Engine
  index: VectorIndex
  /** ms to open the engine and to embed and index the sentences. */
  startup: { open_ms: number; index_ms: number; sentences: number }
}

const byId = new Map<string, string>(sentences.map((text, i) => [idOf(i), text]))

function idOf(i: number): string {
  return `s${String(i).padStart(3, '0')}`
}

let ready: Promise<Ready> | undefined

/** The engine and its index, started once; a failed start is retried on the next call. */
export function engine(): Promise<Ready> {
  ready ??= start().catch((err: unknown) => {
    ready = undefined
    throw err
  })
  return ready
}

async function start(): Promise<Ready> {
  const t0 = performance.now()
  const options: EngineOptions = {}
  if (env.CUDA_ENGINE_MODEL) options.model = env.CUDA_ENGINE_MODEL
  const engine = await Engine.open(options)
  const t1 = performance.now()
  let index: VectorIndex
  try {
    // The model's dimensions (all-MiniLM-L6-v2: 384). Without a model, embed()
    // below rejects with E_MODEL saying how to provide one (HTTP 503).
    const dims = (await engine.health()).model?.dims ?? 384
    // On the model's GPU when it has one, else on the CPU (device 'auto').
    index = await engine.createIndex(INDEX, { dims, metric: 'cosine', capacity: sentences.length })
    await index.upsert(sentences.map((_, i) => idOf(i)), await engine.embed(sentences))
  } catch (err) {
    await engine.close({ drainMs: 0 })
    throw err
  }
  const t2 = performance.now()
  const startup = { open_ms: Math.round(t1 - t0), index_ms: Math.round(t2 - t1), sentences: index.size }
  console.log(`cuda-engine: ${JSON.stringify({ ...startup, device: index.device })}`)
  return { engine, index, startup }
}

/** The k sentences nearest to `query`, best first (cosine scores). */
export async function search(query: string, k: number, signal?: AbortSignal): Promise<Hit[]> {
  const { engine: e } = await engine()
  const { ids, scores } = await e.search(query, { index: INDEX, k, signal, timeoutMs: 10_000 })
  // String ids (this index's); integer-id indexes would give a BigUint64Array.
  return [...ids].map((id, i) => ({ rank: i + 1, id: String(id), text: byId.get(String(id)) ?? '', score: scores[i] }))
}

export async function embed(texts: string[], signal?: AbortSignal): Promise<Float32Array[]> {
  const { engine: e } = await engine()
  return e.embed(texts, { signal, timeoutMs: 10_000 })
}

export async function health(): Promise<Health & { startup: Ready['startup'] }> {
  const { engine: e, startup } = await engine()
  return { ...(await e.health()), startup }
}

/** SIGTERM / SIGINT: let calls in flight finish (up to 5 s), release the engine. */
export async function close(): Promise<void> {
  const r = await ready?.catch(() => undefined)
  ready = undefined
  await r?.engine.close({ drainMs: 5_000 })
}
