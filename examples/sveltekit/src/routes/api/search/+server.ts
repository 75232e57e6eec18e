// GET  /api/search?q=...&k=5
// POST /api/search  {"q": "...", "k": 5}
//   -> {"query": "...", "k": 5, "took_ms": 3.1, "hits": [{"rank": 1, "id": "s007", "text": "...", "score": 0.71}, ...]}
import { json } from '@sveltejs/kit'
import type { RequestHandler } from './$types'
import { search } from '$lib/server/engine'
import { BadRequest, errorResponse } from '$lib/server/errors'
import { searchParams } from '$lib/server/query'

async function answer(q: unknown, k: unknown, signal: AbortSignal): Promise<Response> {
  try {
    const p = searchParams(q, k)
    const t0 = performance.now()
    const hits = await search(p.q, p.k, signal)
    return json({ query: p.q, k: p.k, took_ms: Math.round((performance.now() - t0) * 10) / 10, hits })
  } catch (err) {
    return errorResponse(err)
  }
}

export const GET: RequestHandler = ({ url, request }) =>
  answer(url.searchParams.get('q'), url.searchParams.get('k') ?? undefined, request.signal)

export const POST: RequestHandler = async ({ request }) => {
  const body: unknown = await request.json().catch(() => undefined)
  if (typeof body !== 'object' || body === null) return errorResponse(new BadRequest('body must be JSON {"q": "...", "k": 5}'))
  const { q, k } = body as { q?: unknown; k?: unknown }
  return answer(q, k, request.signal)
}
