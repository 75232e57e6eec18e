'use strict'
// The package's CommonJS entry (`require('cuda-engine')`, and index.mjs for
// `import`). index.js is napi-rs's generated loader, rewritten by every
// `napi build --platform`; this file only replaces its "Cannot find native
// binding. npm has a bug…" with an error naming the platform package that is
// missing for this host and the command that installs it (platform.cjs).
try {
  module.exports = require('./index.js')
} catch (err) {
  throw require('./platform.cjs').missingBindingError(err)
}
