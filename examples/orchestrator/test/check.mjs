// Checks the JSON lines of `node dist/main.js` (used by the repository's
// scripts/test-examples.sh):   node dist/main.js > out.jsonl && node test/check.mjs out.jsonl
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'

const lines = readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l, i) => {
  try {
    return JSON.parse(l)
  } catch {
    throw new Error(`line ${i + 1} is not JSON: ${l}`)
  }
})
const events = lines.filter((l) => l.event).map((l) => l.event)
assert.deepEqual(events, ['ready', 'sigterm', 'closed'], `events ${events}`)
const ready = lines.find((l) => l.event === 'ready')
assert.ok(['ok', 'degraded'].includes(ready.status), JSON.stringify(ready))
assert.equal(ready.model, 'all-MiniLM-L6-v2')
assert.equal(ready.worker.mode, 'persistent')
// The worker of the installed platform package, found by discovery's bundled rule.
if (!process.env.CUDA_WORKER_PATH) {
  assert.equal(ready.worker.source, 'bundled', JSON.stringify(ready.worker))
  assert.match(ready.worker.path, /node_modules\/cuda-engine-linux-x64-gnu\/cuda-worker$/)
}

const job = Object.fromEntries(lines.filter((l) => l.id).map((l) => [l.id, l]))
const ids = lines.filter((l) => l.id).map((l) => l.id)
assert.deepEqual(ids, ['embed-1', 'infer-1', 'submit-json', 'worker-b64', 'worker-raw', 'unknown-type', 'bad-b64', 'timeout', 'during-drain', 'after-sigterm'])
const local = ready.backend // 'cpu' or 'cuda'
const ok = (id, route, backend) => {
  const j = job[id]
  assert.equal(j.ok, true, `${id}: ${JSON.stringify(j)}`)
  assert.equal(j.route, route, id)
  assert.equal(j.backend, backend, id)
  assert.equal(j.attempts, 1, id)
  return j.result
}
const failed = (id, code, status) => {
  const j = job[id]
  assert.equal(j.ok, false, `${id}: ${JSON.stringify(j)}`)
  assert.equal(j.error.code, code, `${id}: ${JSON.stringify(j.error)}`)
  assert.equal(j.error.http_status, status, id)
  assert.equal(typeof j.error.message, 'string')
}

let r = ok('embed-1', 'embed', local)
assert.equal(r.count, 2)
assert.equal(r.dims, 384)
assert.ok(Math.abs(r.norm.min - 1) < 1e-3 && Math.abs(r.norm.max - 1) < 1e-3, JSON.stringify(r.norm))
assert.ok(r.cosine01 > 0.4 && r.cosine01 < 0.8, `cat/feline cosine ${r.cosine01}`)
r = ok('infer-1', 'infer', local)
assert.deepEqual(r.outputs, [{ name: 'sentence_embedding', datatype: 'FP32', shape: [1, 384] }])
assert.equal(r.id, 'infer-1')
r = ok('submit-json', 'submit', local)
assert.equal(r.dims, 384)
assert.equal(r.count, 1)
assert.deepEqual(ok('worker-b64', 'submit', 'worker'), { frame: 7, op: 'resize' })
assert.deepEqual(ok('worker-raw', 'submit', 'worker'), { bytes_b64: Buffer.from([0, 255, 1, 2]).toString('base64') })
failed('unknown-type', 'E_UNKNOWN_TYPE', 404)
failed('bad-b64', 'E_BAD_BASE64', 400)
failed('timeout', 'E_TIMEOUT', 504)
r = ok('during-drain', 'embed', local)
assert.equal(r.count, 64)
failed('after-sigterm', 'E_CLOSED', 503)
console.log(`orchestrator: ${ids.length} jobs as expected (${ids.join(', ')}); worker ${ready.worker.source ?? 'CUDA_WORKER_PATH'} ${ready.worker.path}`)
