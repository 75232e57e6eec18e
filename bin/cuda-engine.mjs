#!/usr/bin/env node
// cuda-engine command line (docs/model.md "Fetching a model").
//
//   npx cuda-engine fetch-model [name] [--dir DIR] [--endpoint URL] [--revision REV]
//
// Downloads a sentence-transformers model (default
// sentence-transformers/all-MiniLM-L6-v2) from the Hugging Face Hub into the
// Hugging Face cache (DIR, else HF_HUB_CACHE, HF_HOME/hub,
// ~/.cache/huggingface/hub) with the addon's downloader: no Python. Prints
// the snapshot directory on stdout (and what it did on stderr); a complete
// cached copy makes no request; HF_HUB_OFFLINE=1 never connects.
// Exit status: 0 done, 1 failed (the error's code and message on stderr), 2 usage.

import { createRequire } from 'node:module'

const USAGE = `usage: cuda-engine fetch-model [name] [--dir DIR] [--endpoint URL] [--revision REV]

  name        a Hugging Face repository id (default sentence-transformers/all-MiniLM-L6-v2)
  --dir       the Hugging Face cache root to write into
              (default HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)
  --endpoint  the hub (default HF_ENDPOINT, else https://huggingface.co)
  --revision  branch, tag or commit (default main)

Prints the model directory. Use it with Engine.open({ model: name }) (or the
printed path), or CUDA_ENGINE_MODEL=name. HF_HUB_OFFLINE=1: cache only.`

function usage(message) {
  if (message) console.error(`cuda-engine: ${message}`)
  console.error(USAGE)
  process.exit(2)
}

function parse(argv) {
  const [command, ...rest] = argv
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    console.log(USAGE)
    process.exit(0)
  }
  if (command !== 'fetch-model') usage(`unknown command ${JSON.stringify(command)}`)
  const flags = { '--dir': 'dir', '--endpoint': 'endpoint', '--revision': 'revision' }
  const options = {}
  let name
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]
    if (arg === '-h' || arg === '--help') {
      console.log(USAGE)
      process.exit(0)
    }
    const eq = arg.indexOf('=')
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg
    if (flag in flags) {
      const value = flag === arg ? rest[++i] : arg.slice(eq + 1)
      if (value === undefined || value === '') usage(`${flag} needs a value`)
      options[flags[flag]] = value
    } else if (arg.startsWith('-')) {
      usage(`unknown option ${arg}`)
    } else if (name === undefined) {
      name = arg
    } else {
      usage(`unexpected argument ${JSON.stringify(arg)}`)
    }
  }
  return { name, options }
}

const { name, options } = parse(process.argv.slice(2))
const require = createRequire(import.meta.url)
// The package's own entry (its `main`), with its missing-binding message.
const { fetchModel } = require('..')
const started = Date.now()
try {
  const r = await fetchModel(name ?? null, options)
  const secs = ((Date.now() - started) / 1000).toFixed(1)
  console.error(
    r.cached
      ? `cuda-engine: ${name ?? 'sentence-transformers/all-MiniLM-L6-v2'} is already in the cache`
      : `cuda-engine: downloaded ${r.downloaded.length} file(s) in ${secs} s${r.downloaded.length ? `: ${r.downloaded.join(', ')}` : ''}`,
  )
  console.log(r.path)
} catch (err) {
  console.error(`cuda-engine: ${err.code ?? 'error'}: ${err.message}`)
  process.exit(1)
}
