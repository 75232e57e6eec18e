// Shared helpers for the node:test suites.
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
export const require = createRequire(import.meta.url)
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const addon = require('../index.js')

/** Await a promise that must reject; return the error. */
export async function rejection(promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected the promise to reject, it resolved')
}

export const b64 = (s) => Buffer.from(s).toString('base64')

/** Deterministic values in [-1, 1) (xorshift32). */
export function randoms(n, seed) {
  let x = seed >>> 0 || 1
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    out[i] = (x / 2 ** 32) * 2 - 1
  }
  return out
}

/** The built cuda-worker ($CUDA_WORKER_BIN, else target/release, else target/debug), or undefined. */
export function builtWorker() {
  return [process.env.CUDA_WORKER_BIN, path.join(root, 'target/release/cuda-worker'), path.join(root, 'target/debug/cuda-worker')]
    .filter(Boolean)
    .find((p) => fs.existsSync(p))
}
