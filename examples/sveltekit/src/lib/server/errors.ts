// Errors as JSON: { error: { code, message } }, with the HTTP status that the
// engine's own code table gives (errorCodes(): E_TOO_LONG 400, E_OVERLOADED 503, ...).
import { json } from '@sveltejs/kit'
import { errorCodes } from 'cuda-engine'

const httpStatus = new Map<string, number>(errorCodes().map((e) => [e.code, e.http_status]))

/** A request the route refuses before the engine sees it. */
export class BadRequest extends Error {
  readonly code = 'E_INVALID_ARG'
  constructor(message: string, readonly status = 400) {
    super(message)
  }
}

export function codeOf(err: unknown): string {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined
  return typeof code === 'string' ? code : 'E_INTERNAL'
}

export function statusOf(err: unknown): number {
  if (err instanceof BadRequest) return err.status
  return httpStatus.get(codeOf(err)) ?? 500
}

export function errorResponse(err: unknown): Response {
  const message = err instanceof Error ? err.message : String(err)
  return json({ error: { code: codeOf(err), message } }, { status: statusOf(err) })
}
