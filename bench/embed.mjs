// Benchmark (not a test): embedding throughput and single-sentence latency
// from JS, next to sentence-transformers measured in the same run.
//
//   node bench/embed.mjs [--sentences 2000] [--batch 128] [--device cpu|cuda|auto]
//                        [--dtype fp32|fp16|bf16] [--model DIR] [--no-baseline] [--json]
//
// Corpus: bench/baseline/make_corpus.py (the corpus of
// ../shared/notes/gpu-machine.md), written under bench/out/.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
// CUDA_ENGINE_ADDON: another build's index.js, for before/after runs in one session.
const { Engine } = require(process.env.CUDA_ENGINE_ADDON || '../index.js')

const argv = process.argv.slice(2)
const opt = (name, def) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : def)
const sentences = Number(opt('sentences', 2000))
const batches = opt('batch', '128').split(',').map(Number)
const device = opt('device', 'cpu')
const dtype = opt('dtype', device === 'cpu' ? 'fp32' : 'fp16')
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const model = path.resolve(opt('model', process.env.CUDA_ENGINE_MODEL || path.join(root, 'models/all-MiniLM-L6-v2')))
const python = opt('python', 'python3')
const out = path.join(root, 'bench/out')
fs.mkdirSync(out, { recursive: true })

function corpus(n, short) {
  const file = path.join(out, `corpus-${n}${short ? '-short' : ''}.txt`)
  if (!fs.existsSync(file)) {
    const text = execFileSync(python, [path.join(root, 'bench/baseline/make_corpus.py'), path.join(model, 'vocab.txt'), String(n), short ? '1' : '0'])
    fs.writeFileSync(file, text)
  }
  return { file, lines: fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) }
}

const long = corpus(sentences, false)
const short = corpus(300, true)

const engine = await Engine.open({ model, device, dtype })
const health = await engine.health()
await engine.embed(long.lines.slice(0, 64)) // load + warm up

const results = { machine: `${os.cpus()[0].model}, ${os.availableParallelism()} cores`, backend: health.model?.backend, device, dtype, sentences: long.lines.length }
for (const bs of batches) {
  const t0 = performance.now()
  for (let i = 0; i < long.lines.length; i += bs) await engine.embed(long.lines.slice(i, i + bs))
  results[`batch_${bs}`] = { sentences_per_s: long.lines.length / ((performance.now() - t0) / 1e3) }
}
{
  const t0 = performance.now()
  await engine.embed(long.lines)
  results.whole_corpus_at_once = { sentences_per_s: long.lines.length / ((performance.now() - t0) / 1e3) }
}
{
  for (const s of short.lines.slice(0, 20)) await engine.embed(s)
  const lat = []
  for (const s of short.lines) {
    const t0 = performance.now()
    await engine.embed(s)
    lat.push(performance.now() - t0)
  }
  lat.sort((a, b) => a - b)
  results.single_ms = { p50: lat[Math.floor(lat.length / 2)], p99: lat[Math.floor(lat.length * 0.99)] }
}
results.health_devices = health.devices
await engine.close()

if (!argv.includes('--no-baseline')) {
  try {
    const st = execFileSync(python, [
      path.join(root, 'bench/baseline/st_baseline.py'), model, long.file,
      '--device', device === 'cpu' ? 'cpu' : 'cuda', '--dtype', dtype === 'fp32' ? 'fp32' : 'fp16',
      '--batch', batches.join(','), '--single', short.file,
    ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    results.sentence_transformers = JSON.parse(st)
    const tokens = results.sentence_transformers.tokens
    for (const k of Object.keys(results)) {
      if (results[k]?.sentences_per_s) results[k].tokens_per_s = (results[k].sentences_per_s * tokens) / long.lines.length
    }
    const stBest = Math.max(...batches.map((b) => results.sentence_transformers[`batch_${b}`].sentences_per_s))
    results.ratio_whole_corpus_vs_st_best_batch = results.whole_corpus_at_once.sentences_per_s / stBest
    results.ratio_single_p50_st_over_ours = results.sentence_transformers.single_ms.p50 / results.single_ms.p50
  } catch (e) {
    results.sentence_transformers = { error: String(e.message).split('\n')[0] }
  }
}
console.log(JSON.stringify(results, null, 1))
