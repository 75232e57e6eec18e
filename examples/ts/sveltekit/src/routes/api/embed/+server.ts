// examples/ts/sveltekit/src/routes/api/embed/+server.ts
import { json, error } from '@sveltejs/kit'
import type { RequestHandler } from '@sveltejs/kit'
import { embed, errorCodes } from 'cuda-engine'

const MAX_TEXTS = 256
// err.code -> HTTP status, from the engine's own table (E_TOO_LONG: 400, E_OVERLOADED: 503, ...)
const httpStatus = new Map(errorCodes().map((e) => [e.code, e.http_status]))

/** The body must be `{ "texts": string[] }`; anything else answers 400 before the engine sees it. */
async function readTexts(request: Request): Promise<string[]> {
  const body: unknown = await request.json().catch(() => undefined)
  const texts = typeof body === 'object' && body !== null && 'texts' in body ? body.texts : undefined
  if (!Array.isArray(texts) || !texts.every((t): t is string => typeof t === 'string')) {
    error(400, 'body must be JSON {"texts": ["...", ...]}: an array of strings')
  }
  if (texts.length > MAX_TEXTS) error(413, `at most ${MAX_TEXTS} texts per request, got ${texts.length}`)
  return texts
}

export const POST: RequestHandler = async ({ request }) => {
  const texts = await readTexts(request)
  try {
    const vectors = await embed(texts, { signal: request.signal, timeoutMs: 10_000 })
    return json({ dims: vectors[0]?.length ?? 0, embeddings: vectors.map((v) => Array.from(v)) })
  } catch (err: any) {
    error(httpStatus.get(err.code) ?? 500, `${err.code}: ${err.message}`)
  }
}
