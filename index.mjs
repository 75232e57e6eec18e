// ESM entry: the same binding as the generated CommonJS loader (index.js).
export * from './index.js'
import binding from './index.js'
export default binding
