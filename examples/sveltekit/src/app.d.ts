// See https://svelte.dev/docs/kit/types#app.d.ts
declare global {
  namespace App {
    interface Error {
      /** The engine's error code (err.code), or E_INVALID_ARG for a bad request. */
      code?: string
    }
  }
}

export {}
