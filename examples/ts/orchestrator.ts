// examples/ts/orchestrator.ts
import { Engine } from 'cuda-engine'
import type { Envelope, ErrorCode, JobResult } from 'cuda-engine'

const engine = await Engine.open({
  worker: { mode: 'persistent', poolSize: 2 }, // found by CUDA_WORKER_PATH / discovery
})

export type JobOutcome = JobResult | { ok: false; error: { code: ErrorCode; message: string } }

export async function runJob(envelope: Envelope | string | Uint8Array, signal: AbortSignal): Promise<JobOutcome> {
  try {
    // embedding/echo run in-process; other types go to the worker
    return await engine.submit(envelope, { signal, timeoutMs: 30_000 })
  } catch (err: any) {
    // err.code is stable: E_BAD_BASE64, E_TOO_LARGE, E_WORKER_TIMEOUT, E_CLOSED, ...
    return { ok: false, error: { code: err.code, message: err.message } }
  }
}

process.once('SIGTERM', async () => {
  // New calls reject with E_CLOSED; in-flight jobs get 10 s to finish, then E_CANCELLED.
  await engine.close({ drainMs: 10_000 })
  process.exit(0)
})
