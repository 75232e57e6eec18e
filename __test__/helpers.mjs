// Shared helpers for the node:test suites.
import { createRequire } from 'node:module'
export const require = createRequire(import.meta.url)
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
