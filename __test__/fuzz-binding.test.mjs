// A short run of the binding fuzzer (scripts/fuzz-binding.mjs; docs/reliability.md
// "Fuzzing"): 3,000 generated inputs of every JS type as the arguments and
// options of every async export, in a child process so a native crash fails
// this test instead of killing the runner. Every call must settle with a value
// or a coded rejection from errorCodes() (never E_INTERNAL, never a synchronous
// throw), the sync exports may throw only coded errors naming the field, and
// the ordinary calls mixed in must keep returning the right values.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const N = Number(process.env.FUZZ_BINDING_N ?? 3000)
const SEED = Number(process.env.FUZZ_BINDING_SEED ?? 20261201)

test(`binding fuzz: ${N} inputs (seed ${SEED}) settle with table codes, no crash`, { timeout: 180_000 }, async () => {
  const out = await new Promise((resolve) => {
    execFile(process.execPath, [path.join(ROOT, 'scripts', 'fuzz-binding.mjs'), '--n', String(N), '--seed', String(SEED), '--json'],
      { cwd: ROOT, maxBuffer: 64 << 20 }, (err, stdout, stderr) => resolve({ err, stdout, stderr }))
  })
  const line = out.stdout.trim().split('\n').pop()
  assert.ok(line, `no report from the fuzzer: ${out.stderr.slice(-2000)}`)
  const report = JSON.parse(line)
  assert.ok(report.done, `the child crashed: ${JSON.stringify(report.crash, null, 1)}`)
  const s = report.stats
  const detail = JSON.stringify({ stats: s, failures: report.failures.slice(0, 5) }, null, 1)
  assert.equal(s.inputs, N)
  assert.equal(s.settled, s.calls, `every promise settles: ${detail}`)
  assert.equal(s.unsettled, 0, detail)
  assert.equal(s.syncThrows, 0, `no synchronous throw from an async export: ${detail}`)
  assert.equal(s.notPromise, 0, detail)
  assert.equal(s.uncoded, 0, `every rejection has a .code: ${detail}`)
  assert.equal(s.unknownCode, 0, `every code is in errorCodes(): ${detail}`)
  assert.equal(s.internal, 0, `no E_INTERNAL: ${detail}`)
  assert.equal(s.ordinaryWrong, 0, `ordinary calls keep their results: ${detail}`)
  assert.ok(s.syncExportCalls > 0, `the sync exports were called: ${detail}`)
  assert.deepEqual(report.failures, [], detail)
})
