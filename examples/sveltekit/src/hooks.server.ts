import { building } from '$app/environment'
import type { ServerInit } from '@sveltejs/kit'
import { close, engine } from '$lib/server/engine'

// Start the engine and build the index when the server starts (not while
// `vite build` analyses the routes), so the first search does not wait.
export const init: ServerInit = async () => {
  if (building) return
  engine().catch((err: unknown) => console.error('cuda-engine: start failed:', err))
  // adapter-node, on SIGTERM / SIGINT: stops accepting, lets open requests
  // finish, then emits this; the engine then drains its calls and closes.
  process.once('sveltekit:shutdown', () => void close())
}
