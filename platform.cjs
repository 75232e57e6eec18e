'use strict'
// Which prebuilt platform package serves this host (the napi-rs convention:
// `cuda-engine-<platform>-<arch>[-<abi>]`, published from npm/<name>/ and
// listed in cuda-engine's optionalDependencies), where its files are, and
// the error a user reads when it is missing. Used by loader.cjs (the package
// entry) and bin/cuda-worker.js.
const { readFileSync } = require('node:fs')
const path = require('node:path')

const pkg = require('./package.json')

/** glibc or musl, the way napi's generated loader decides it. */
function isMusl() {
  if (process.platform !== 'linux') return false
  try {
    return readFileSync('/usr/bin/ldd', 'utf-8').includes('musl')
  } catch {}
  try {
    const report = process.report && process.report.getReport()
    if (report && report.header && report.header.glibcVersionRuntime) return false
    if (report && Array.isArray(report.sharedObjects)) {
      return report.sharedObjects.some((f) => f.includes('libc.musl-') || f.includes('ld-musl-'))
    }
  } catch {}
  return false
}

/** This host's napi platform name: linux-x64-gnu, linux-arm64-musl, darwin-arm64, win32-x64-msvc, ... */
function platformId(platform = process.platform, arch = process.arch, musl = isMusl()) {
  if (platform === 'linux') {
    const abi = arch === 'arm' ? (musl ? 'musleabihf' : 'gnueabihf') : musl ? 'musl' : 'gnu'
    return `linux-${arch}-${abi}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

/** The platform package's name for this host. */
function platformPackage(id = platformId()) {
  return `${pkg.name}-${id}`
}

/** The platform packages this version was published with (its optionalDependencies). */
function prebuiltPackages() {
  return Object.keys(pkg.optionalDependencies || {}).filter((n) => n.startsWith(`${pkg.name}-`))
}

/** The platform package's directory when it is installed, else null. */
function platformPackageDir(name = platformPackage()) {
  try {
    return path.dirname(require.resolve(`${name}/package.json`))
  } catch {
    return null
  }
}

/** The cuda-worker binary the platform package ships, or null. */
function bundledWorker() {
  const dir = platformPackageDir()
  return dir && path.join(dir, process.platform === 'win32' ? 'cuda-worker.exe' : 'cuda-worker')
}

function firstCause(err) {
  let e = err && err.cause
  const causes = []
  while (e) {
    if (Array.isArray(e)) {
      causes.push(...e)
      break
    }
    causes.push(e)
    e = e.cause
  }
  // "Cannot find module" for every name the loader tried says nothing more
  // than the message does; a dlopen error (wrong glibc, bad file) does.
  const real = causes.find((c) => c && c.code !== 'MODULE_NOT_FOUND' && !/^Cannot find module /.test(String(c.message || c)))
  return real ? String(real.message || real).split('\n')[0] : ''
}

/**
 * What to tell the user when the native binding does not load: which
 * platform package is missing (or broken) and the command that fixes it.
 * `cause` is the loader's own error, kept as `.cause`.
 */
function missingPackageMessage(what) {
  const name = platformPackage()
  const spec = `${name}@${pkg.version}`
  const prebuilt = prebuiltPackages()
  const host = `${process.platform}-${process.arch}${process.platform === 'linux' ? (isMusl() ? ' (musl)' : ' (glibc)') : ''}`
  const dir = platformPackageDir(name)
  if (process.env.NAPI_RS_NATIVE_LIBRARY_PATH) {
    return `${pkg.name}: ${what}: NAPI_RS_NATIVE_LIBRARY_PATH=${process.env.NAPI_RS_NATIVE_LIBRARY_PATH} did not load; unset it to use ${spec}`
  }
  if (dir) {
    return (
      `${pkg.name}: ${what}: the platform package ${spec} is installed at ${dir} but does not work here; ` +
      `reinstall it: npm install ${spec}`
    )
  }
  if (prebuilt.length > 0 && !prebuilt.includes(name)) {
    return (
      `${pkg.name}: ${what}: there is no prebuilt package for ${host} (${name}); prebuilt: ${prebuilt.join(', ')}. ` +
      `Build the addon from the repository with a Rust toolchain (npx napi build --platform --release) ` +
      `and point NAPI_RS_NATIVE_LIBRARY_PATH at the .node file`
    )
  }
  return (
    `${pkg.name}: ${what}: the platform package ${name} is not installed (npm leaves optional dependencies out ` +
    `with --omit=optional or --no-optional, and a package-lock.json made on another platform can lack it). ` +
    `Install it: npm install ${spec}`
  )
}

function missingBindingError(cause) {
  const detail = firstCause(cause)
  const err = new Error(
    missingPackageMessage(`no native binding for ${platformId()}`) + (detail ? `. Loader: ${detail}` : ''),
  )
  err.cause = cause
  return err
}

module.exports = { isMusl, platformId, platformPackage, prebuiltPackages, platformPackageDir, bundledWorker, missingPackageMessage, missingBindingError }
