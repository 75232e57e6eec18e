// Packaging (issue 11, README "Packaging"): what `npm pack` ships from the
// root package and from the platform package, the package.json fields of
// the napi-rs convention, the error when the platform package is missing,
// and `npx cuda-worker`'s pass-through of arguments, exit status and
// signals. scripts/test-registry.sh checks the real tarballs through a
// registry.
import test from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
const hostId = process.platform === 'linux' && process.arch === 'x64' ? 'linux-x64-gnu' : null

/** `npm pack --dry-run --json` of a folder: [{ path, mode }]. */
function dryRun(dir) {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', '--loglevel=error'], { cwd: dir, encoding: 'utf8' })
  const [entry] = JSON.parse(out)
  return entry.files.map((f) => ({ path: f.path, mode: f.mode })).sort((a, b) => a.path.localeCompare(b.path))
}

function listFiles(dir, prefix = '') {
  return fs.readdirSync(path.join(root, dir, prefix), { withFileTypes: true }).flatMap((e) => {
    const rel = path.posix.join(prefix, e.name)
    return e.isDirectory() ? listFiles(dir, rel) : [path.posix.join(dir, rel)]
  })
}

function tmpdir(t, name) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), name))
  t.after(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

test('root package: npm pack ships the loader, types, ESM entry, bins, docs, protos and README, nothing else', () => {
  const files = dryRun(root)
  const want = [
    'README.md',
    ...listFiles('bin'),
    'index.d.ts',
    'index.js',
    'index.mjs',
    'loader.cjs',
    'package.json',
    'platform.cjs',
    ...listFiles('docs'),
    ...listFiles('proto'),
  ].sort((a, b) => a.localeCompare(b))
  assert.deepEqual(files.map((f) => f.path), want)
  for (const f of files) {
    assert.doesNotMatch(f.path, /\.node$|^src\/|^crates\/|Cargo|^__test__\/|^tests\/|fixtures|^scripts\/|^models\/|^npm\//, f.path)
  }
  for (const bin of Object.values(pkg.bin)) {
    assert.ok(files.some((f) => f.path === bin), `bin ${bin} is shipped`)
  }
  assert.ok((files.find((f) => f.path === 'bin/cuda-worker.js').mode & 0o111) !== 0, 'bin/cuda-worker.js is executable')
  assert.ok(!fs.existsSync(path.join(root, `${pkg.napi.binaryName}.linux-x64-gnu.node`)) || !files.some((f) => f.path.endsWith('.node')), 'the root .node is not shipped')
})

test('root package.json: entries, bins, no install scripts, one platform package per napi target', () => {
  assert.equal(pkg.main, 'loader.cjs')
  assert.deepEqual(pkg.exports['.'], { types: './index.d.ts', import: './index.mjs', require: './loader.cjs' })
  assert.equal(pkg.bin['cuda-service'], 'bin/cuda-service.mjs')
  assert.equal(pkg.bin['cuda-worker'], 'bin/cuda-worker.js')
  for (const k of ['preinstall', 'install', 'postinstall', 'prepare']) assert.equal(pkg.scripts[k], undefined, `no ${k} script`)
  assert.equal(pkg.scripts.artifacts, 'bash scripts/artifacts.sh')
  // The optionalDependencies are written by `napi pre-publish` into the
  // staged copy (scripts/artifacts.sh); the repository's lock file stays valid.
  assert.equal(pkg.optionalDependencies, undefined)
  const dirs = fs.readdirSync(path.join(root, 'npm')).sort()
  const fromTargets = pkg.napi.targets
    .map((t) => ({ 'x86_64-unknown-linux-gnu': 'linux-x64-gnu', 'aarch64-unknown-linux-gnu': 'linux-arm64-gnu', 'x86_64-unknown-linux-musl': 'linux-x64-musl' })[t])
    .sort()
  assert.deepEqual(dirs, fromTargets)
})

test('platform packages: napi fields, same version, and npm pack ships the .node and an executable cuda-worker only', (t) => {
  const abi = { gnu: 'glibc', musl: 'musl' }
  for (const id of fs.readdirSync(path.join(root, 'npm'))) {
    const dir = path.join(root, 'npm', id)
    const p = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
    const [platform, arch, libc] = id.split('-')
    assert.equal(p.name, `${pkg.name}-${id}`)
    assert.equal(p.version, pkg.version, `${p.name} has the root's version`)
    assert.deepEqual(p.os, [platform])
    assert.deepEqual(p.cpu, [arch])
    assert.deepEqual(p.libc, [abi[libc]])
    assert.equal(p.main, `${pkg.napi.binaryName}.${id}.node`)
    assert.deepEqual(p.files, [p.main, 'cuda-worker'])
    assert.equal(p.scripts, undefined)

    // A copy with stand-in binaries and some junk: only the listed files go.
    const stage = tmpdir(t, `cuda-pack-${id}-`)
    for (const f of ['package.json', 'README.md']) fs.copyFileSync(path.join(dir, f), path.join(stage, f))
    fs.writeFileSync(path.join(stage, p.main), 'not really a shared object')
    fs.writeFileSync(path.join(stage, 'cuda-worker'), '#!/bin/sh\n', { mode: 0o755 })
    fs.writeFileSync(path.join(stage, 'build.log'), 'junk')
    fs.mkdirSync(path.join(stage, 'src'))
    fs.writeFileSync(path.join(stage, 'src', 'lib.rs'), 'junk')
    const files = dryRun(stage)
    assert.deepEqual(files.map((f) => f.path), ['README.md', 'cuda-worker', p.main, 'package.json'].sort((a, b) => a.localeCompare(b)))
    assert.equal(files.find((f) => f.path === 'cuda-worker').mode & 0o777, 0o755, 'cuda-worker keeps its execute bits')
  }
})

/** The root package as npm installs it (the files npm pack ships), under `<dir>/node_modules/cuda-engine`. */
function installRoot(dir) {
  const to = path.join(dir, 'node_modules', pkg.name)
  for (const { path: f } of dryRun(root)) {
    if (f.startsWith('docs/')) continue
    fs.mkdirSync(path.dirname(path.join(to, f)), { recursive: true })
    fs.copyFileSync(path.join(root, f), path.join(to, f))
    fs.chmodSync(path.join(to, f), fs.statSync(path.join(root, f)).mode & 0o777)
  }
  fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"app","private":true}')
  return to
}

const cleanEnv = () => {
  const env = { ...process.env }
  delete env.NAPI_RS_NATIVE_LIBRARY_PATH
  delete env.CUDA_WORKER_PATH
  return env
}

test('platform package missing: require and import name it and the install command', { skip: !hostId && 'the expected names are for linux x64' }, (t) => {
  const app = tmpdir(t, 'cuda-missing-')
  installRoot(app)
  const spec = `${pkg.name}-${hostId}@${pkg.version}`
  for (const [how, code] of [
    ['require', `try { require('${pkg.name}') } catch (e) { console.error(e.message); process.exit(1) }`],
    ['import', `import('${pkg.name}').then(() => {}, (e) => { console.error(e.message); process.exit(1) })`],
  ]) {
    const r = spawnSync(process.execPath, ['-e', code], { cwd: app, env: cleanEnv(), encoding: 'utf8' })
    assert.notEqual(r.status, 0, `${how} must fail`)
    assert.match(r.stderr, new RegExp(`the platform package ${pkg.name}-${hostId} is not installed`), `${how}: ${r.stderr}`)
    assert.ok(r.stderr.includes(`npm install ${spec}`), `${how} names the fix: ${r.stderr}`)
    assert.doesNotMatch(r.stderr, /npm has a bug/)
  }
  // npx cuda-worker says the same.
  const w = spawnSync(process.execPath, [path.join(app, 'node_modules', pkg.name, 'bin', 'cuda-worker.js'), '--version'], { cwd: app, env: cleanEnv(), encoding: 'utf8' })
  assert.equal(w.status, 127)
  assert.ok(w.stderr.includes(`npm install ${spec}`), w.stderr)

  // Installed but unloadable (a broken .node): the message says reinstall, with the loader's reason.
  const plat = path.join(app, 'node_modules', `${pkg.name}-${hostId}`)
  fs.mkdirSync(plat)
  fs.copyFileSync(path.join(root, 'npm', hostId, 'package.json'), path.join(plat, 'package.json'))
  fs.writeFileSync(path.join(plat, `${pkg.napi.binaryName}.${hostId}.node`), 'not an ELF file')
  const r = spawnSync(process.execPath, ['-e', `require('${pkg.name}')`], { cwd: app, env: cleanEnv(), encoding: 'utf8' })
  assert.match(r.stderr, /is installed at .* but does not work here; reinstall it: npm install/, r.stderr)
  assert.match(r.stderr, /invalid ELF header|not an ELF|file too short/, r.stderr)
})

test('npx cuda-worker: runs the platform package binary with our args and stdio; exit status and signals pass through', { skip: !hostId && 'linux x64 only' }, (t) => {
  const app = tmpdir(t, 'cuda-binwrap-')
  const rootDir = installRoot(app)
  const plat = path.join(app, 'node_modules', `${pkg.name}-${hostId}`)
  fs.mkdirSync(plat)
  fs.copyFileSync(path.join(root, 'npm', hostId, 'package.json'), path.join(plat, 'package.json'))
  // A stand-in worker: echoes its args and stdin, exits with $1, or kills itself with a signal.
  fs.writeFileSync(
    path.join(plat, 'cuda-worker'),
    '#!/bin/sh\necho "args:$*"\ncase "$1" in\n  term) kill -TERM $$ ;;\n  wait) trap "echo got-term; exit 42" TERM; echo ready; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 9 ;;\nesac\ncat\nexit "$1"\n',
    { mode: 0o755 },
  )
  const bin = path.join(rootDir, 'bin', 'cuda-worker.js')
  const run = (args, input = '') => spawnSync(process.execPath, [bin, ...args], { cwd: app, env: cleanEnv(), input, encoding: 'utf8' })
  let r = run(['7', 'two words'], 'from stdin\n')
  assert.equal(r.status, 7)
  assert.equal(r.stdout, 'args:7 two words\nfrom stdin\n')
  r = run(['0'])
  assert.equal(r.status, 0)
  r = run(['term'])
  assert.equal(r.signal, 'SIGTERM', `the wrapper dies of the worker's signal (${r.status} ${r.signal})`)
  // A SIGTERM sent to the wrapper reaches the worker.
  return new Promise((resolve, reject) => {
    const child = spawnAsync(bin, app)
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      if (out.includes('ready') && !child.sent) {
        child.sent = true
        child.kill('SIGTERM')
      }
    })
    child.on('exit', (code) => {
      child.stdout.destroy()
      try {
        assert.match(out, /got-term/)
        assert.equal(code, 42)
        resolve()
      } catch (e) {
        reject(e)
      }
    })
  })
})

function spawnAsync(bin, cwd) {
  return spawn(process.execPath, [bin, 'wait'], { cwd, env: cleanEnv(), stdio: ['pipe', 'pipe', 'inherit'] })
}
