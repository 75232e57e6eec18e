// health(): the DESIGN.md shape, and cuda_available that tells the truth.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { addon } from './helpers.mjs'

/** Does this machine have an NVIDIA driver we could use? (independent check) */
function hostHasCudaDriver() {
  const dirs = ['/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/local/nvidia/lib64', '/usr/lib/wsl/lib']
  return fs.existsSync('/dev/nvidiactl') && dirs.some((d) => fs.existsSync(`${d}/libcuda.so.1`) || fs.existsSync(`${d}/libcuda.so`))
}

test('health() has the documented shape', async () => {
  const h = await addon.health()
  for (const key of ['status', 'version', 'cuda_available', 'backend', 'cuda_path', 'worker', 'devices', 'model', 'compute', 'queue', 'errors']) {
    assert.ok(key in h, `health().${key} is missing`)
  }
  assert.match(h.status, /^(ok|degraded|error)$/)
  assert.equal(h.version, JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url))).version)
  assert.equal(typeof h.cuda_available, 'boolean')
  assert.ok(Array.isArray(h.cuda_path))
  assert.ok(Array.isArray(h.devices))
  assert.ok(Array.isArray(h.errors))
  assert.equal(typeof h.queue.depth, 'number')
  assert.equal(typeof h.queue.in_flight, 'number')
  for (const k of ['path', 'source', 'mode', 'running', 'restarts']) assert.ok(k in h.worker, `worker.${k}`)
})

test('cuda_available matches the machine', async () => {
  const h = await addon.health()
  if (hostHasCudaDriver()) {
    assert.equal(h.cuda_available, true, `driver present but: ${h.errors.join('; ')}`)
    assert.ok(h.devices.length >= 1)
    assert.match(h.devices[0].compute_capability, /^\d+\.\d+$/)
    assert.ok(h.devices[0].memory_total > 0)
  } else {
    assert.equal(h.cuda_available, false)
    assert.deepEqual(h.devices, [])
    assert.ok(h.errors.some((e) => e.startsWith('cuda:')), 'health says why CUDA is unavailable')
  }
})

test('after a model loads, health reports it and its compute backend', async () => {
  const path = await import('node:path')
  const modelDir = path.resolve(new URL('..', import.meta.url).pathname, 'models/all-MiniLM-L6-v2')
  const engine = await addon.Engine.open({ model: modelDir })
  try {
    const h = await engine.health()
    assert.equal(h.model.name, 'all-MiniLM-L6-v2')
    assert.equal(h.model.dims, 384)
    assert.equal(h.compute.backend, h.cuda_available ? 'cuda' : 'cpu')
    assert.equal(h.backend, h.compute.backend)
    assert.equal(h.compute.fault, null)
    if (!h.cuda_available) {
      // device 'auto' without CUDA: served on the CPU, which is what a
      // CPU-only host has, so `ok` (readiness probes pass); errors say why.
      assert.equal(h.status, 'ok')
      assert.ok(h.errors.some((e) => e.startsWith('device:')), h.errors.join('; '))
    }
    const cpu = await addon.Engine.open({ model: modelDir, device: 'cpu' })
    const hc = await cpu.health()
    assert.equal(hc.status, 'ok')
    assert.equal(hc.compute.backend, 'cpu')
    await cpu.close()
    const cuda = addon.Engine.open({ model: modelDir, device: 'cuda' })
    if (h.cuda_available) await (await cuda).close()
    else assert.equal((await cuda.then(() => null, (e) => e)).code, 'E_CUDA_UNAVAILABLE')
  } finally {
    await engine.close()
  }
})

// Issue 10 item 10: concurrent health() calls share a bounded blocking pool
// (64 threads) instead of starting one thread each (521 at 20,000 calls).
test('20,000 concurrent health() calls start at most the bounded pool of threads', async () => {
  const threads = () => Number(fs.readFileSync('/proc/self/status', 'utf8').match(/^Threads:\s+(\d+)/m)[1])
  const health = addon.health
  await health()
  const before = threads()
  let peak = before
  const timer = setInterval(() => { peak = Math.max(peak, threads()) }, 1)
  const all = await Promise.all(Array.from({ length: 20000 }, () => health()))
  clearInterval(timer)
  // Idle blocking threads linger for 10 s, so the count now is the peak too.
  peak = Math.max(peak, threads())
  assert.equal(all.length, 20000)
  assert.ok(all.every((h) => h.status === all[0].status), 'every call answered the same status')
  assert.ok(peak - before <= 64 + 4, `threads ${before} -> peak ${peak}`)
})
