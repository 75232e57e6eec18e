// POST /api/embed  {"texts": ["...", ...]}  ->  {"dims": 384, "embeddings": [[...], ...]}
import { json } from '@sveltejs/kit'
import type { RequestHandler } from './$types'
import { embed } from '$lib/server/engine'
import { BadRequest, errorResponse } from '$lib/server/errors'

const MAX_TEXTS = 256

export const POST: RequestHandler = async ({ request }) => {
  try {
    const body: unknown = await request.json().catch(() => undefined)
    const texts = typeof body === 'object' && body !== null && 'texts' in body ? body.texts : undefined
    if (!Array.isArray(texts) || texts.length === 0 || !texts.every((t): t is string => typeof t === 'string')) {
      throw new BadRequest('body must be JSON {"texts": ["...", ...]}: a non-empty array of strings')
    }
    if (texts.length > MAX_TEXTS) throw new BadRequest(`at most ${MAX_TEXTS} texts per request, got ${texts.length}`, 413)
    const vectors = await embed(texts, request.signal)
    return json({ dims: vectors[0]?.length ?? 0, embeddings: vectors.map((v) => Array.from(v)) })
  } catch (err) {
    return errorResponse(err)
  }
}
