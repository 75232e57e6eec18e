// Compile-time contract (scripts/check-ts.sh): the option types are closed, so
// misspelled keys do not compile. Every line under a @ts-expect-error must be
// an error; check-ts.sh also strips the directives and checks that tsc then
// fails naming each misspelled key.
import { Engine, VectorIndex, embed } from 'cuda-engine'

export async function typos(): Promise<void> {
  // @ts-expect-error maxEnvelopBytes: misspelled maxEnvelopeBytes
  await Engine.open({ maxEnvelopBytes: 10 })
  // @ts-expect-error devise: misspelled device
  await Engine.open({ devise: 'cuda' })
  // @ts-expect-error normalise: misspelled normalize
  await embed('x', { normalise: false })
  // @ts-expect-error limits: options are flat, there is no nested limits object
  await Engine.open({ limits: { maxEnvelopeBytes: 1024 } })
  // @ts-expect-error timeout: the call option is timeoutMs
  await embed(['x'], { timeout: 5 })
  // @ts-expect-error poolsize: misspelled worker.poolSize
  await Engine.open({ worker: { mode: 'persistent', poolsize: 2 } })
  // @ts-expect-error timeoutMS: misspelled remote.timeoutMs
  await Engine.open({ remote: { endpoints: 'grpc://127.0.0.1:8001', timeoutMS: 5 } })
  // @ts-expect-error endpoint: the remote option is endpoints
  await Engine.open({ remote: { endpoint: 'grpc://127.0.0.1:8001' } })
  // @ts-expect-error drain: the close option is drainMs
  await (await Engine.open()).close({ drain: 10 })
  // @ts-expect-error metrik: misspelled metric
  await VectorIndex.create({ dims: 384, metrik: 'ip' })
  // @ts-expect-error topK: the search option is k
  await (await VectorIndex.create({ dims: 3 })).search(new Float32Array(3), { topK: 5 })
  // @ts-expect-error indexName: the engine.search option is index
  await (await Engine.open()).search('x', { index: 'docs', indexName: 'docs' })
}

// Vector search types: results per query, string or bigint ids.
export async function vectors(engine: Engine): Promise<number> {
  const index: VectorIndex = await engine.createIndex('docs', { dims: 384, metric: 'cosine', dtype: 'fp16' })
  await index.upsert(['a', 'b'], await engine.embed(['x', 'y']), { namespaces: ['t1', null] })
  const [hits] = await index.search(new Float32Array(384), { k: 2, namespace: 't1' })
  const one = await engine.search('x', { index: 'docs', k: 1 })
  const many = await engine.search(['x', 'y'], { index: 'docs' })
  const scores: Float32Array = one.scores
  return hits.ids.length + scores.length + many.length + index.size
}

// The overloads: one text gives one vector, many give many.
export async function overloads(engine: Engine): Promise<number> {
  const one: Float32Array = await embed('x')
  const many: Float32Array[] = await embed(['x', 'y'], { normalize: false, truncate: true })
  const mine: Float32Array = await engine.embed('x', { timeoutMs: 1000 })
  const mineMany: Float32Array[] = await engine.embed(['x'])
  return one.length + many.length + mine.length + mineMany.length
}

// The remote client's options and target (docs/grpc.md "Client").
export async function remotes(): Promise<number> {
  const a = await Engine.open({ remote: 'grpc://127.0.0.1:8001' })
  const b = await Engine.open({ remote: ['grpc://10.0.0.5:8001', 'grpcs://infer.example.com:443'] })
  const c = await Engine.open({
    remote: { endpoints: 'grpc://127.0.0.1:8001', model: 'm', timeoutMs: 5000, connectTimeoutMs: 500, retries: 1,
              embedInput: 'text', embedOutput: 'sentence_embedding', maxMessageBytes: 1 << 26 },
  })
  const v: Float32Array = await a.embed('x', { target: 'remote' })
  const r = await b.submit({ type: 'embedding', payload: { text: 'x' } }, { target: 'remote' })
  const backend: 'cuda' | 'cpu' | 'worker' | 'remote' = r.backend
  const h = await c.health()
  const ready: boolean | null = h.remote?.endpoints[0]?.ready ?? null
  return v.length + backend.length + (ready ? 1 : 0)
}
