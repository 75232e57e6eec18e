// Reading and checking the search parameters (GET query string or POST JSON body).
import { BadRequest } from './errors'

export const MAX_K = 50
export const MAX_QUERY_CHARS = 2_000

export interface SearchParams {
  q: string
  k: number
}

export function searchParams(q: unknown, k: unknown): SearchParams {
  if (typeof q !== 'string' || q.trim() === '') throw new BadRequest('q must be a non-empty string')
  if (q.length > MAX_QUERY_CHARS) throw new BadRequest(`q is longer than ${MAX_QUERY_CHARS} characters`, 413)
  const n = k === undefined || k === null || k === '' ? 5 : Number(k)
  if (!Number.isInteger(n) || n < 1 || n > MAX_K) throw new BadRequest(`k must be an integer in 1..${MAX_K}, got ${JSON.stringify(k)}`)
  return { q: q.trim(), k: n }
}
