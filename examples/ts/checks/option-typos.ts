// Compile-time contract (scripts/check-ts.sh): the option types are closed, so
// misspelled keys do not compile. Every line under a @ts-expect-error must be
// an error; check-ts.sh also strips the directives and checks that tsc then
// fails naming each misspelled key.
import { Engine, embed } from 'cuda-engine'

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
  // @ts-expect-error drain: the close option is drainMs
  await (await Engine.open()).close({ drain: 10 })
}

// The overloads: one text gives one vector, many give many.
export async function overloads(engine: Engine): Promise<number> {
  const one: Float32Array = await embed('x')
  const many: Float32Array[] = await embed(['x', 'y'], { normalize: false, truncate: true })
  const mine: Float32Array = await engine.embed('x', { timeoutMs: 1000 })
  const mineMany: Float32Array[] = await engine.embed(['x'])
  return one.length + many.length + mine.length + mineMany.length
}
