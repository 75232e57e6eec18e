import adapter from '@sveltejs/adapter-node'

/** @type {import('@sveltejs/kit').Config} */
const config = {
  kit: {
    // `node build` serves the app; cuda-engine stays an external import of
    // build/ because it is in `dependencies` (adapter-node bundles devDependencies).
    adapter: adapter(),
  },
}

export default config
