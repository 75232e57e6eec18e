// ESM entry: the same binding as the CommonJS entry (loader.cjs, which wraps
// napi's generated index.js with a clearer missing-binding error).
export * from './loader.cjs'
import binding from './loader.cjs'
export default binding
