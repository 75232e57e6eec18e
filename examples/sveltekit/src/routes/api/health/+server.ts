// GET /api/health -> engine.health() plus the start-up timings; 503 unless status is "ok" or "degraded".
import { json } from '@sveltejs/kit'
import type { RequestHandler } from './$types'
import { health } from '$lib/server/engine'
import { errorResponse } from '$lib/server/errors'

export const GET: RequestHandler = async () => {
  try {
    const h = await health()
    return json(h, { status: h.status === 'error' ? 503 : 200 })
  } catch (err) {
    return errorResponse(err)
  }
}
