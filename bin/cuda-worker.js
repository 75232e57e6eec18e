#!/usr/bin/env node
'use strict'
// `npx cuda-worker`: runs the cuda-worker binary shipped in this host's
// platform package (cuda-engine-<platform>), with this process's arguments
// and stdio; its exit code (or the signal that ended it) becomes ours, and
// signals sent to this process are passed on to it.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const { bundledWorker, missingPackageMessage } = require('../platform.cjs')

const bin = bundledWorker()
if (!bin || !fs.existsSync(bin)) {
  console.error(missingPackageMessage(bin ? `no cuda-worker at ${bin}` : 'no cuda-worker binary'))
  process.exit(127)
}

// Handlers first, so a signal that arrives while the worker starts is not lost.
let child = null
const forwarded = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR2', 'SIGWINCH'].filter(
  (s) => process.platform !== 'win32' || s === 'SIGINT' || s === 'SIGTERM',
)
const handlers = forwarded.map((sig) => {
  const h = () => {
    try {
      child.kill(sig)
    } catch {}
  }
  process.on(sig, h)
  return [sig, h]
})
child = spawn(bin, process.argv.slice(2), { stdio: 'inherit' })

child.on('error', (err) => {
  console.error(`cuda-worker: cannot run ${bin}: ${err.message}`)
  process.exit(126)
})
child.on('exit', (code, signal) => {
  for (const [sig, h] of handlers) process.removeListener(sig, h)
  if (signal) {
    // Die of the same signal, so a caller sees what the worker saw.
    process.kill(process.pid, signal)
    setTimeout(() => process.exit(128 + (require('node:os').constants.signals[signal] || 0)), 100)
  } else {
    process.exit(code ?? 1)
  }
})
