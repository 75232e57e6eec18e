// The page's search runs on the server: a GET form (?q=...&k=...), so it
// works without JavaScript too; SvelteKit's client router submits it without
// a full reload when JavaScript is on.
import type { PageServerLoad } from './$types'
import { search } from '$lib/server/engine'
import { codeOf, statusOf } from '$lib/server/errors'
import { searchParams } from '$lib/server/query'
import type { Hit } from '$lib/server/engine'
import sentences from '$lib/server/sentences.json'

export const load: PageServerLoad = async ({ url, request }) => {
  const q = url.searchParams.get('q')
  const k = url.searchParams.get('k') ?? undefined
  const base = { q: q ?? '', k: Number(k ?? 5) || 5, count: sentences.length }
  if (q === null) return { ...base, hits: [] as Hit[], took_ms: null, error: null }
  try {
    const p = searchParams(q, k)
    const t0 = performance.now()
    const hits = await search(p.q, p.k, request.signal)
    return { ...base, hits, took_ms: Math.round((performance.now() - t0) * 10) / 10, error: null }
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    return { ...base, hits: [] as Hit[], took_ms: null, error: { code: codeOf(err), status: statusOf(err), message } }
  }
}
