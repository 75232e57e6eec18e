// Soak and leak benchmark (not a test, not in CI): issue 10's "Soak and leak
// tests as benchmarks". Runs, in one process, each phase with its resources
// (RSS, fds, threads, child processes) read before, after warm-up and at the
// end, a full GC before every reading, and prints one JSON summary per phase
// on stdout (progress on stderr). Exits 1 when a target fails, 2 on bad usage.
//
//   node --expose-gc bench/soak.mjs [--quick] [options]     (or bash bench/soak.sh …)
//
// Phases (--phases, comma-separated, in this order by default):
//   submit-embed    --submits 1000000 --embeds 100000: echo submits (objects,
//                   JSON strings, payload_b64, bytes envelopes, raw-byte
//                   payloads; --inflight 64), then embed calls of 1–8 short
//                   texts (--embed-inflight 64) on one Engine with --model.
//                   Target: RSS growth < --rss-target-mb (50) after warm-up
//                   (the first --warmup 0.1 of the submits and of the embeds).
//   restart         --restarts 10000: a persistent sh worker (poolSize
//                   --restart-pool 4, restartDelayMs 0, reapOrphans) that exits
//                   after answering one job. Targets: fds, threads, children
//                   back to their starting values after close();
//                   health().worker.restarts == deaths (= answers).
//   restart-setsid  --setsid-restarts 10000: the same, but each worker first
//                   leaves `setsid sleep --stray-sleep-s 2` holding its
//                   stdout/stderr (the engine abandons the pipes 500 ms after
//                   the exit, so --setsid-pool 32 run at once). The strays'
//                   pids are recorded; those still alive at the end are killed.
//   open-close      --cycles 1000: Engine.open({ model }) + one embed +
//                   close(). Targets: fds, threads, children back to the start; RSS
//                   growth < --rss-target-mb after warm-up (a model not
//                   released on close would add ~90 MB per cycle).
//
// --baseline-model runs the model once before the first reading (use it on a
// GPU machine: the driver's per-process state then counts as the baseline).
// --quick divides every count by 100. fds/threads/children are compared after
// close() once they settle (polled up to --settle-ms 15000: idle runtime
// threads exit after a keep-alive). --out FILE appends the JSON lines there;
// --pretty indents them. --rss-cap-mb 8192 stops a phase whose RSS passes it.
import { createRequire } from 'node:module'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const self = fileURLToPath(import.meta.url)
if (typeof global.gc !== 'function') {
  // Readings need a full GC first: re-run under --expose-gc.
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, self, ...process.argv.slice(2)], { stdio: 'inherit' })
  process.exit(r.status ?? 1)
}

const root = path.resolve(path.dirname(self), '..')
const require = createRequire(import.meta.url)
const { Engine } = require(process.env.CUDA_ENGINE_ADDON || '../index.js')

// ---------- options ----------
const DEFAULTS = {
  submits: 1_000_000, embeds: 100_000, restarts: 10_000, 'setsid-restarts': 10_000, cycles: 1_000,
  inflight: 64, 'embed-inflight': 64, 'restart-pool': 4, 'setsid-pool': 32, 'stray-sleep-s': 2,
  warmup: 0.1, 'settle-ms': 15_000, 'rss-target-mb': 50, 'rss-cap-mb': 8192,
  model: path.join(root, 'models/all-MiniLM-L6-v2'), phases: 'submit-embed,restart,restart-setsid,open-close', out: '',
}
const COUNTS = ['submits', 'embeds', 'restarts', 'setsid-restarts', 'cycles']
const PHASES = DEFAULTS.phases.split(',')
function usage(msg) {
  console.error(`soak: ${msg}\nusage: node --expose-gc bench/soak.mjs [--quick] [--pretty] [--baseline-model] ` +
    Object.entries(DEFAULTS).map(([k, v]) => `[--${k} ${v === '' ? 'X' : v}]`).join(' '))
  process.exit(2)
}
const opt = { ...DEFAULTS, quick: false, pretty: false, 'baseline-model': false }
const given = new Set()
for (let a = process.argv.slice(2), i = 0; i < a.length; i++) {
  const k = a[i].replace(/^--/, '')
  if (k === 'quick' || k === 'pretty' || k === 'baseline-model') { opt[k] = true; continue }
  if (k === 'help' || k === 'h') usage('help')
  if (!(k in DEFAULTS) || !a[i].startsWith('--') || i + 1 >= a.length) usage(`bad argument ${a[i]}`)
  const v = a[++i]
  if (typeof DEFAULTS[k] === 'number') {
    const n = Number(v.replace(/_/g, ''))
    if (!Number.isFinite(n) || n < 0) usage(`--${k} wants a number ≥ 0, got ${v}`)
    opt[k] = n
  } else opt[k] = v
  given.add(k)
}
if (opt.quick) for (const k of COUNTS) if (!given.has(k)) opt[k] = Math.max(1, Math.round(DEFAULTS[k] / 100))
const phases = opt.phases.split(',').filter(Boolean)
for (const p of phases) if (!PHASES.includes(p)) usage(`unknown phase ${p} (phases: ${PHASES.join(', ')})`)
const MB = 1024 * 1024
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const log = (...m) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...m)

// ---------- resource readings ----------
function children() {
  const out = []
  for (const name of fs.readdirSync('/proc')) {
    if (name.charCodeAt(0) > 57) continue // not a pid
    let stat
    try { stat = fs.readFileSync(`/proc/${name}/stat`, 'latin1') } catch { continue }
    const close = stat.lastIndexOf(')')
    const f = stat.slice(close + 2).split(' ')
    if (Number(f[1]) === process.pid) out.push({ pid: Number(name), state: f[0], comm: stat.slice(stat.indexOf('(') + 1, close) })
  }
  return out
}
function procStatus() {
  const s = fs.readFileSync('/proc/self/status', 'latin1')
  const kb = (k) => Number(s.match(new RegExp(`${k}:\\s+(\\d+)`))[1]) * 1024
  return { rss: kb('VmRSS'), hwm: kb('VmHWM'), threads: Number(s.match(/Threads:\s+(\d+)/)[1]) }
}
const fdCount = () => fs.readdirSync('/proc/self/fd').length - 1 // minus readdir's own fd
/** One reading; `gc` first (twice: the second collects what finalizers freed). */
function reading(gc = true) {
  if (gc) { global.gc(); global.gc() }
  const st = procStatus()
  const mu = process.memoryUsage()
  const kids = children()
  return {
    rss_mb: round(st.rss / MB), node_rss_mb: round(mu.rss / MB), heap_used_mb: round(mu.heapUsed / MB),
    external_mb: round(mu.external / MB), array_buffers_mb: round(mu.arrayBuffers / MB),
    fds: fdCount(), threads: st.threads, children: kids.length, zombies: kids.filter((k) => k.state === 'Z').length,
  }
}
/** Peak of each resource, sampled every 200 ms (no GC) while a phase runs. */
function peakTracker() {
  const peak = { rss_mb: 0, fds: 0, threads: 0, children: 0 }
  const take = () => {
    const st = procStatus()
    peak.rss_mb = Math.max(peak.rss_mb, round(st.rss / MB))
    peak.threads = Math.max(peak.threads, st.threads)
    peak.fds = Math.max(peak.fds, fdCount())
    peak.children = Math.max(peak.children, children().length)
  }
  take()
  const t = setInterval(take, 200)
  return { peak, stop() { clearInterval(t); take(); return peak } }
}
/** After close(): poll until fds, threads and children are back to `base` (or settle-ms passes). */
async function settle(base) {
  const t0 = performance.now()
  const first = reading()
  let r = first
  while (performance.now() - t0 < opt['settle-ms']) {
    if (r.fds <= base.fds && r.threads <= base.threads && r.children <= base.children) break
    await sleep(250)
    r = reading()
  }
  return { at_close: first, settled: r, settle_ms: Math.round(performance.now() - t0) }
}
function backToStart(base, after, keys = ['fds', 'threads', 'children']) {
  const out = {}
  for (const k of keys) out[k] = { before: base[k], after: after[k], pass: after[k] <= base[k] }
  return out
}
function rssCheck(warm, end) {
  const growth = round(end.rss_mb - warm.rss_mb)
  return { after_warmup_mb: warm.rss_mb, end_mb: end.rss_mb, growth_mb: growth, target_mb: opt['rss-target-mb'], pass: growth < opt['rss-target-mb'] }
}
const countCode = (codes, err) => { const c = err?.code ?? `no code: ${String(err?.message ?? err).slice(0, 80)}`; codes[c] = (codes[c] || 0) + 1 }
const progress = (label, total) => {
  let last = performance.now()
  return (done) => {
    const now = performance.now()
    if (now - last > 10_000) { last = now; log(`${label}: ${done}/${total}, rss ${round(procStatus().rss / MB)} MB`) }
  }
}
/** Run `total` calls of `one(i)` with `depth` in flight. */
async function pool(total, depth, one, onDone = () => {}) {
  let next = 0
  let done = 0
  await Promise.all(Array.from({ length: Math.min(depth, total) }, async () => {
    while (next < total) {
      const i = next++
      await one(i)
      onDone(++done)
    }
  }))
}

// ---------- phase 1: submits + embeds ----------
const WORDS = 'the quick brown fox jumps over a lazy dog while GPU kernels launch and tensors flow through sentence embedding models in a Node.js service on two cores'.split(' ')
let seed = 42
const rand = (n) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n
const text = () => Array.from({ length: 3 + rand(10) }, () => WORDS[rand(WORDS.length)]).join(' ')
const KINDS = ['object', 'json_string', 'payload_b64', 'bytes', 'raw_payload']

function envelope(i) {
  const kind = KINDS[i % KINDS.length]
  const payload = { n: i, text: 'hello world', list: [1, 2.5, 'x', null, true], nested: { a: { b: i } } }
  switch (kind) {
    case 'object': return { kind, env: { type: 'echo', id: `s${i}`, payload } }
    case 'json_string': return { kind, env: JSON.stringify({ type: 'echo', id: `s${i}`, payload }) }
    case 'payload_b64': return { kind, env: { type: 'echo', id: `s${i}`, payload_b64: Buffer.from(JSON.stringify(payload)).toString('base64') } }
    case 'bytes': return { kind, env: Buffer.from(JSON.stringify({ type: 'echo', id: `s${i}`, payload })) }
    default: {
      const raw = Buffer.alloc(12)
      raw.writeUInt32BE(0xc0ffee, 0)
      raw.writeDoubleBE(i, 4)
      return { kind, env: { type: 'echo', id: `s${i}`, payload: raw, encoding: 'raw' }, raw }
    }
  }
}
function checkEcho(i, r, raw) {
  if (!r || r.ok !== true || r.id !== `s${i}`) return false
  if (raw) return Buffer.isBuffer(r.result) && r.result.equals(raw)
  return r.result?.n === i && r.result?.nested?.a?.b === i
}

async function phaseSubmitEmbed() {
  const S = opt.submits, E = opt.embeds
  const ws = Math.round(S * opt.warmup), we = Math.round(E * opt.warmup)
  const before = reading()
  const tracker = peakTracker()
  const t0 = performance.now()
  const engine = await Engine.open({ model: opt.model })
  const openMs = performance.now() - t0
  const h0 = await engine.health()
  const dims = h0.model?.dims
  const sub = { ok: 0, mismatched: 0, failed: 0, codes: {}, by_kind: Object.fromEntries(KINDS.map((k) => [k, 0])) }
  const emb = { ok: 0, texts: 0, mismatched: 0, failed: 0, codes: {} }
  const oneSubmit = async (i) => {
    const { kind, env, raw } = envelope(i)
    sub.by_kind[kind]++
    try {
      const r = await engine.submit(env)
      if (checkEcho(i, r, raw)) sub.ok++
      else sub.mismatched++
    } catch (e) { sub.failed++; countCode(sub.codes, e) }
  }
  const oneEmbed = async () => {
    const texts = Array.from({ length: 1 + rand(8) }, text)
    try {
      const v = await engine.embed(texts)
      let good = Array.isArray(v) && v.length === texts.length
      for (const x of v) good &&= x instanceof Float32Array && x.length === dims && Number.isFinite(x[0])
      if (good) { const n = Math.hypot(...v[0]); good = Math.abs(n - 1) < 1e-3 }
      if (good) { emb.ok++; emb.texts += texts.length } else emb.mismatched++
    } catch (e) { emb.failed++; countCode(emb.codes, e) }
  }
  const timed = async (f) => { const t = performance.now(); await f(); return (performance.now() - t) / 1e3 }
  log(`submit-embed: warm-up ${ws} submits + ${we} embeds`)
  const wsS = await timed(() => pool(ws, opt.inflight, oneSubmit))
  const textsBefore = emb.texts
  const weS = await timed(() => pool(we, opt['embed-inflight'], oneEmbed))
  const warmTexts = emb.texts - textsBefore
  const afterWarmup = reading()
  log(`submit-embed: ${S - ws} submits`)
  const sS = await timed(() => pool(S - ws, opt.inflight, (i) => oneSubmit(ws + i), progress('submits', S - ws)))
  const afterSubmits = reading()
  log(`submit-embed: ${E - we} embeds`)
  const eS = await timed(() => pool(E - we, opt['embed-inflight'], oneEmbed, progress('embeds', E - we)))
  const end = reading()
  const h = await engine.health()
  await engine.close()
  const closed = await settle(before)
  const peak = tracker.stop()
  const rss = rssCheck(afterWarmup, end)
  return {
    phase: 'submit-embed',
    backend: h.compute?.backend ?? h.backend, model: h.model?.name ?? null, open_ms: Math.round(openMs),
    submits: { count: S, warmup: ws, in_flight: opt.inflight, ...sub, per_s: Math.round((S - ws) / sS), warmup_per_s: Math.round(ws / wsS), seconds: round(wsS + sS) },
    embeds: {
      count: E, warmup: we, in_flight: opt['embed-inflight'], ...emb, per_s: round((E - we) / eS), texts_per_s: Math.round((emb.texts - warmTexts) / eS),
      warmup_per_s: round(we / weS), seconds: round(weS + eS),
    },
    queue_at_end: h.queue,
    resources: { before, after_warmup: afterWarmup, after_submits: afterSubmits, end, after_close: closed.at_close, settled: closed.settled, settle_ms: closed.settle_ms, peak, hwm_mb: round(procStatus().hwm / MB) },
    targets: {
      rss_growth_after_warmup: rss,
      all_calls_ok: { failed: sub.failed + emb.failed, mismatched: sub.mismatched + emb.mismatched, pass: sub.failed + emb.failed + sub.mismatched + emb.mismatched === 0 },
      back_to_start_after_close: backToStart(before, closed.settled),
    },
  }
}

// ---------- phase 2: worker restarts ----------
function writeWorker(dir, stray) {
  const file = path.join(dir, stray ? 'stray.sh' : 'once.sh')
  // One NDJSON request in, one answer out, exit 0. `stray`: first leave a
  // setsid'd sleep (its own session, outside our kill group) holding
  // stdout/stderr; $! is its pid (a background job of a non-interactive sh
  // is not a group leader, so setsid execs sleep without forking).
  fs.writeFileSync(file, `#!/bin/sh
echo $$ >> '${dir}/starts'
IFS= read -r line || exit 0
case "$line" in *'"cancel":true'*) exit 0 ;; esac
id=\${line#*\\"id\\":}; id=\${id%%[,\\}]*}
${stray ? `setsid sleep ${opt['stray-sleep-s']} </dev/null &\necho $! >> '${dir}/strays'` : ''}
printf '{"id":%s,"ok":true,"result":"pong"}\\n' "$id"
exit 0
`, { mode: 0o755 })
  return file
}
const lines = (f) => { try { return fs.readFileSync(f, 'utf8').split('\n').filter(Boolean) } catch { return [] } }
function procState(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1')
    const close = s.lastIndexOf(')')
    const f = s.slice(close + 2).split(' ')
    return { comm: s.slice(s.indexOf('(') + 1, close), state: f[0], ppid: Number(f[1]) }
  } catch { return null }
}

async function phaseRestart(stray) {
  const N = stray ? opt['setsid-restarts'] : opt.restarts
  const poolSize = Math.min(64, stray ? opt['setsid-pool'] : opt['restart-pool'])
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cuda-soak-'))
  const worker = writeWorker(dir, stray)
  const before = reading()
  const tracker = peakTracker()
  const engine = await Engine.open({ worker: { path: worker, args: [], mode: 'persistent', poolSize, restartDelayMs: 0, reapOrphans: true, timeoutMs: 10_000 } })
  const res = { sent: 0, ok: 0, failed: 0, codes: {}, bad_result: 0 }
  const warm = Math.round(N * opt.warmup)
  let afterWarmup = null
  const prog = progress(stray ? 'setsid restarts' : 'restarts', N)
  const t0 = performance.now()
  // Every answered job is one worker death (and one restart): run until N answers.
  await Promise.all(Array.from({ length: Math.min(poolSize, N) }, async () => {
    while (res.ok + (res.sent - res.ok - res.failed) < N) {
      res.sent++
      try {
        const r = await engine.submit({ type: 'ping', payload: res.sent }, { target: 'worker' })
        if (r.result === 'pong') res.ok++
        else res.bad_result++
      } catch (e) { res.failed++; countCode(res.codes, e) }
      prog(res.ok)
      if (!afterWarmup && res.ok >= warm) afterWarmup = reading()
    }
  }))
  const secs = (performance.now() - t0) / 1e3
  // The last deaths' restarts (and, with strays, the pipes' 500 ms grace) may still be under way.
  let h = await engine.health()
  for (let t = performance.now(), last = -1; performance.now() - t < 5000 && h.worker.restarts !== last; ) {
    last = h.worker.restarts
    await sleep(stray ? 700 : 100)
    h = await engine.health()
  }
  const end = reading()
  await engine.close()
  const closed = await settle(before)
  const starts = lines(path.join(dir, 'starts')).length
  let strays = null
  if (stray) {
    const pids = lines(path.join(dir, 'strays')).map(Number)
    const alive = pids.filter((p) => { const s = procState(p); return s && s.comm === 'sleep' && s.state !== 'Z' })
    for (const p of alive) try { process.kill(p, 'SIGKILL') } catch {}
    await sleep(200)
    const left = pids.map(procState).filter((s) => s && s.comm === 'sleep')
    strays = {
      recorded: pids.length, alive_after_close: alive.length, killed: alive.length,
      still_running: left.filter((s) => s.state !== 'Z').length,
      // Re-parented to this process (the subreaper) and never reaped:
      zombies_of_this_process: left.filter((s) => s.state === 'Z' && s.ppid === process.pid).length,
      reaped: pids.length - left.length,
    }
  }
  const final = reading()
  const peak = tracker.stop()
  fs.rmSync(dir, { recursive: true, force: true })
  // Deaths = answered jobs (each process answers one, then exits) — a job that
  // failed was sent to a process that had already taken its one job.
  const deaths = res.ok
  return {
    phase: stray ? 'restart-setsid' : 'restart',
    worker: { pool_size: poolSize, in_flight: Math.min(poolSize, N), restart_delay_ms: 0, reap_orphans: true, ...(stray ? { stray_sleep_s: opt['stray-sleep-s'] } : {}) },
    jobs: { ...res, e_worker_exit: res.codes.E_WORKER_EXIT ?? 0, other_failures: res.failed - (res.codes.E_WORKER_EXIT ?? 0) },
    restarts: { health: h.worker.restarts, deaths, processes_started: starts, per_s: Math.round(h.worker.restarts / secs), seconds: round(secs) },
    strays,
    resources: { before, after_warmup: afterWarmup, end, after_close: closed.at_close, settled: closed.settled, settle_ms: closed.settle_ms, after_stray_cleanup: stray ? final : undefined, peak },
    targets: {
      restarts_match: { health_restarts: h.worker.restarts, deaths, started_minus_pool: starts - poolSize, pass: h.worker.restarts === deaths && starts - poolSize === deaths },
      no_unexpected_failures: { other_failures: res.failed - (res.codes.E_WORKER_EXIT ?? 0) + res.bad_result, pass: res.failed - (res.codes.E_WORKER_EXIT ?? 0) + res.bad_result === 0 },
      back_to_start_after_close: backToStart(before, closed.settled),
      ...(stray ? { back_to_start_after_stray_cleanup: backToStart(before, final) } : {}),
    },
  }
}

// ---------- phase 3: open/close cycles ----------
async function phaseOpenClose() {
  const N = opt.cycles
  const warm = Math.max(1, Math.round(N * opt.warmup))
  const before = reading()
  const tracker = peakTracker()
  const res = { ok: 0, failed: 0, codes: {}, open_ms: [], close_ms: [] }
  let afterWarmup = null
  let aborted = null
  let open = null
  const prog = progress('open-close cycles', N)
  const t0 = performance.now()
  for (let i = 0; i < N; i++) {
    try {
      const t = performance.now()
      const engine = await Engine.open({ model: opt.model })
      const t1 = performance.now()
      const v = await engine.embed([`cycle ${i}: ${text()}`])
      const t2 = performance.now()
      if (i === warm - 1) open = reading() // an engine open: what one holds
      await engine.close()
      res.open_ms.push(t1 - t)
      res.close_ms.push(performance.now() - t2)
      if (v.length === 1 && v[0].length > 0) res.ok++
      else res.failed++
    } catch (e) { res.failed++; countCode(res.codes, e) }
    if (i === warm - 1) afterWarmup = reading()
    prog(i + 1)
    if (procStatus().rss > opt['rss-cap-mb'] * MB) { aborted = `RSS over --rss-cap-mb ${opt['rss-cap-mb']} after ${i + 1} cycles`; break }
  }
  const secs = (performance.now() - t0) / 1e3
  const end = reading()
  const closed = await settle(before)
  const peak = tracker.stop()
  const cycles = res.ok + res.failed
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return round(s[Math.floor(s.length / 2)] ?? 0) }
  const rss = rssCheck(afterWarmup ?? before, closed.settled)
  return {
    phase: 'open-close',
    cycles: { count: N, done: cycles, ok: res.ok, failed: res.failed, codes: res.codes, per_s: round(cycles / secs, 2), seconds: round(secs), open_ms_median: med(res.open_ms), close_ms_median: med(res.close_ms), aborted },
    resources: {
      before, with_engine_open: open, after_warmup: afterWarmup, end, settled: closed.settled, settle_ms: closed.settle_ms, peak,
      rss_per_cycle_after_warmup_kb: afterWarmup && cycles > warm ? round(((closed.settled.rss_mb - afterWarmup.rss_mb) * 1024) / (cycles - warm)) : null,
      rss_vs_before_mb: round(closed.settled.rss_mb - before.rss_mb),
    },
    targets: {
      rss_growth_after_warmup: rss,
      no_failures: { failed: res.failed, pass: res.failed === 0 && !aborted },
      back_to_start: backToStart(before, closed.settled),
    },
  }
}

// ---------- main ----------
function passed(v) {
  if (v && typeof v === 'object') return ('pass' in v ? v.pass : true) && Object.values(v).every(passed)
  return true
}
const emit = (obj) => {
  const s = opt.pretty ? JSON.stringify(obj, null, 2) : JSON.stringify(obj)
  console.log(s)
  if (opt.out) fs.appendFileSync(opt.out, JSON.stringify(obj) + '\n')
}
const start = reading()
{ // Start the engine's shared runtime once, so the first phase's baseline is not its one-off start-up.
  // --baseline-model also runs the model once: on a GPU the CUDA driver keeps
  // process-wide state from its first context to exit (fds of /dev/nvidia*,
  // a thread), which belongs in the baseline, not in a phase's growth.
  const e = await Engine.open(opt['baseline-model'] ? { model: opt.model } : {})
  await e.submit({ type: 'echo', payload: 1 })
  if (opt['baseline-model']) await e.embed(['baseline'])
  await e.close()
}
await sleep(100)
emit({
  soak: 'start', time: new Date().toISOString(), machine: `${os.cpus()[0]?.model}, ${os.availableParallelism()} cores, ${round(os.totalmem() / 2 ** 30)} GiB`,
  node: process.version, pid: process.pid, quick: opt.quick, options: Object.fromEntries(Object.keys(DEFAULTS).map((k) => [k, opt[k]])),
  process_start: start, after_runtime_start: reading(),
})
let failed = []
for (const p of phases) {
  const t = performance.now()
  let r
  try {
    r = p === 'submit-embed' ? await phaseSubmitEmbed() : p === 'restart' ? await phaseRestart(false) : p === 'restart-setsid' ? await phaseRestart(true) : await phaseOpenClose()
  } catch (e) {
    r = { phase: p, error: { code: e?.code ?? null, message: String(e?.message ?? e) }, targets: { ran: { pass: false } } }
  }
  r.pass = passed(r.targets)
  r.wall_s = round((performance.now() - t) / 1e3)
  if (!r.pass) failed.push(p)
  emit(r)
}
emit({ soak: 'end', time: new Date().toISOString(), pass: failed.length === 0, failed_phases: failed, final: reading(), hwm_mb: round(procStatus().hwm / MB) })
process.exit(failed.length ? 1 : 0)
