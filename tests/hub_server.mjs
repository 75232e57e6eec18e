// A local stand-in for the Hugging Face Hub, on 127.0.0.1, serving one
// model directory as a repository in the hub's URL layout and headers, for
// the downloader's tests (__test__/model-hub.test.mjs). The real client,
// huggingface_hub's snapshot_download, is run against it in those tests so
// that this fake does not only confirm our own reading of the protocol.
//
// Layout (as huggingface.co answers, 2025):
//   GET  /api/models/{org}/{name}/revision/{rev}[?blobs=true]
//        {id, sha, siblings: [{rfilename[, size, blobId, lfs: {sha256, size, pointerSize}]}]}
//   GET  /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=true
//        [{type: 'file'|'directory', path, oid, size[, lfs: {oid, size, pointerSize}]}]
//   HEAD|GET /{org}/{name}/resolve/{rev}/{file}
//        regular file: 307 to /api/resolve-cache/models/{org}/{name}/{commit}/{file}
//          (same host), which answers 200 with ETag (the git blob id),
//          X-Repo-Commit, Content-Length, Accept-Ranges;
//        LFS file (by the model's .gitattributes): 302 to the "CDN", another
//          host name (http://localhost:PORT/cdn-lfs/{sha256}), with
//          X-Linked-Etag ("sha256"), X-Linked-Size, X-Repo-Commit, ETag;
//          the CDN answers 200/206 (Range) with Content-Length, ETag.
//   Errors: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound.
//
// Knobs (properties of the returned server object): `log` (every request:
// method, url, range, status, host), `connections` (TCP connections
// accepted), `cut` ({ file, after, times }: send the headers and `after`
// bytes of the file, then drop the connection), `corrupt` (a Set of files
// whose bytes are altered in transit, headers unchanged), `throttle`
// ({ file, bytesPerTick, tickMs }), `relativeRedirect` (default true),
// `servedBytes` (per file, body bytes written), `reset()`.
//
// CLI: node tests/hub_server.mjs MODEL_DIR [REPO_ID] → prints
// `{"endpoint": "http://127.0.0.1:PORT", "repo": ..., "commit": ...}` and serves until killed.

import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'

const sha = (alg, ...parts) => {
  const h = crypto.createHash(alg)
  for (const p of parts) h.update(p)
  return h.digest('hex')
}

/** git's `.gitattributes` globs (the subset model repos use) as RegExps. */
function lfsMatchers(dir) {
  let text = ''
  try {
    text = fs.readFileSync(path.join(dir, '.gitattributes'), 'utf8')
  } catch {
    text = '*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n'
  }
  const out = []
  for (const line of text.split('\n')) {
    const [pattern, ...attrs] = line.trim().split(/\s+/)
    if (!pattern || pattern.startsWith('#') || !attrs.includes('filter=lfs')) continue
    let re = ''
    for (let i = 0; i < pattern.length; i++) {
      const c = pattern[i]
      if (c === '*' && pattern[i + 1] === '*') {
        re += '.*'
        i++
      } else if (c === '*') re += '[^/]*'
      else if (c === '?') re += '[^/]'
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
    }
    // A pattern without a slash matches the base name at any depth.
    out.push(new RegExp(pattern.includes('/') ? `^${re}$` : `(^|/)${re}$`))
  }
  return out
}

function listFiles(dir, rel = '') {
  const out = []
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name
    if (e.name.startsWith('.') && e.name !== '.gitattributes') continue
    if (e.isDirectory()) out.push(...listFiles(dir, r))
    else if (e.isFile()) out.push(r)
  }
  return out.sort()
}

/** The repository: every file with its git blob id, size and LFS info. */
export function loadRepo(modelDir) {
  const lfs = lfsMatchers(modelDir)
  const files = new Map()
  for (const rel of listFiles(modelDir)) {
    const abs = path.join(modelDir, rel)
    const data = fs.readFileSync(abs)
    const entry = { rel, abs, size: data.length, data }
    if (lfs.some((re) => re.test(rel))) {
      entry.sha256 = sha('sha256', data)
      const pointer = `version https://git-lfs.github.com/spec/v1\noid sha256:${entry.sha256}\nsize ${data.length}\n`
      entry.pointerSize = Buffer.byteLength(pointer)
      entry.oid = sha('sha1', `blob ${entry.pointerSize}\0`, pointer)
    } else {
      entry.oid = sha('sha1', `blob ${data.length}\0`, data)
    }
    files.set(rel, entry)
  }
  const commit = sha('sha1', ...[...files.values()].map((f) => `${f.rel}:${f.oid}\n`))
  return { files, commit }
}

/**
 * Start the fake hub. `repo`: the id it serves (default
 * sentence-transformers/all-MiniLM-L6-v2). Resolves to the server object
 * with `endpoint`, `commit`, `files` and the knobs described above.
 */
export async function startHubServer({ modelDir, repo = 'sentence-transformers/all-MiniLM-L6-v2', port = 0 } = {}) {
  const { files, commit } = loadRepo(modelDir)
  const state = {
    log: [],
    connections: 0,
    cut: null,
    corrupt: new Set(),
    throttle: null,
    relativeRedirect: true,
    servedBytes: {},
  }
  const bySha = new Map([...files.values()].filter((f) => f.sha256).map((f) => [f.sha256, f]))
  let base = ''
  let cdnBase = ''

  const send = (res, status, headers = {}, body = '') => {
    res.writeHead(status, headers)
    res.end(body)
  }
  const notFound = (res, code, message) =>
    send(res, 404, { 'X-Error-Code': code, 'X-Error-Message': message, 'Content-Type': 'application/json' },
      JSON.stringify({ error: message }))
  const revisionOk = (rev) => rev === 'main' || rev === commit

  function info(blobs) {
    return {
      _id: 'fake',
      id: repo,
      modelId: repo,
      author: repo.split('/')[0],
      sha: commit,
      lastModified: '2024-01-01T00:00:00.000Z',
      private: false,
      disabled: false,
      gated: false,
      downloads: 0,
      likes: 0,
      tags: ['sentence-transformers'],
      library_name: 'sentence-transformers',
      createdAt: '2022-01-01T00:00:00.000Z',
      siblings: [...files.values()].map((f) =>
        blobs
          ? { rfilename: f.rel, blobId: f.oid, size: f.size, ...(f.sha256 ? { lfs: { sha256: f.sha256, size: f.size, pointerSize: f.pointerSize } } : {}) }
          : { rfilename: f.rel }),
    }
  }

  function tree(prefix, recursive) {
    const out = []
    const dirs = new Set()
    for (const f of files.values()) {
      if (prefix && !f.rel.startsWith(prefix + '/')) continue
      const rest = prefix ? f.rel.slice(prefix.length + 1) : f.rel
      const parts = rest.split('/')
      for (let i = 1; i < parts.length; i++) {
        const d = (prefix ? prefix + '/' : '') + parts.slice(0, i).join('/')
        if (!recursive && i > 1) break
        if (!dirs.has(d)) {
          dirs.add(d)
          out.push({ type: 'directory', oid: sha('sha1', d), size: 0, path: d })
        }
      }
      if (!recursive && parts.length > 1) continue
      out.push({
        type: 'file',
        oid: f.oid,
        size: f.size,
        path: f.rel,
        ...(f.sha256 ? { lfs: { oid: f.sha256, size: f.size, pointerSize: f.pointerSize } } : {}),
      })
    }
    return out
  }

  /** Serve a file's bytes, with Range, and the test knobs. */
  function serveBytes(req, res, f, extra) {
    let start = 0
    let end = f.size - 1
    let status = 200
    const range = req.headers.range
    const m = range && /^bytes=(\d*)-(\d*)$/.exec(range.trim())
    if (m) {
      if (m[1] === '') {
        start = Math.max(0, f.size - Number(m[2]))
      } else {
        start = Number(m[1])
        if (m[2] !== '') end = Math.min(end, Number(m[2]))
      }
      if (start >= f.size || start > end) {
        return send(res, 416, { 'Content-Range': `bytes */${f.size}`, ...extra })
      }
      status = 206
    }
    const headers = {
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(end - start + 1),
      'Accept-Ranges': 'bytes',
      ...extra,
    }
    if (status === 206) headers['Content-Range'] = `bytes ${start}-${end}/${f.size}`
    res.writeHead(status, headers)
    if (req.method === 'HEAD') return res.end()
    let body = f.data.subarray(start, end + 1)
    if (state.corrupt.has(f.rel)) {
      body = Buffer.from(body)
      body[Math.floor(body.length / 2)] ^= 0xff
    }
    const cut = state.cut && state.cut.file === f.rel && (state.cut.times ?? 1) > 0 ? state.cut : null
    if (cut) cut.times = (cut.times ?? 1) - 1
    const limit = cut ? Math.min(body.length, cut.after) : body.length
    const throttle = state.throttle && state.throttle.file === f.rel ? state.throttle : null
    const chunk = throttle ? throttle.bytesPerTick : 1 << 20
    let off = 0
    const count = (n) => (state.servedBytes[f.rel] = (state.servedBytes[f.rel] ?? 0) + n)
    const pump = () => {
      while (off < limit) {
        const piece = body.subarray(off, Math.min(limit, off + chunk))
        off += piece.length
        count(piece.length)
        const ok = res.write(piece)
        if (throttle) return setTimeout(pump, throttle.tickMs ?? 10)
        if (!ok) return res.once('drain', pump)
      }
      if (cut) {
        // Let what was written reach the client, then drop the connection.
        setTimeout(() => res.socket?.destroy(), 100)
        return
      }
      res.end()
    }
    res.on('close', () => {
      off = limit
    })
    pump()
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    const entry = { method: req.method, url: req.url, range: req.headers.range ?? null, host: req.headers.host, auth: req.headers.authorization ?? null }
    state.log.push(entry)
    res.on('finish', () => (entry.status = res.statusCode))
    res.on('close', () => (entry.status ??= res.statusCode))
    const p = decodeURIComponent(url.pathname)
    let m
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(p))) {
      if (m[1] !== repo) return notFound(res, 'RepoNotFound', `Repository not found: ${m[1]}`)
      if (!revisionOk(m[2])) return notFound(res, 'RevisionNotFound', `Invalid rev id: ${m[2]}`)
      return send(res, 200, { 'Content-Type': 'application/json' }, JSON.stringify(info(url.searchParams.has('blobs'))))
    }
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)(?:\/(.*))?$/.exec(p))) {
      if (m[1] !== repo) return notFound(res, 'RepoNotFound', `Repository not found: ${m[1]}`)
      if (!revisionOk(m[2])) return notFound(res, 'RevisionNotFound', `Invalid rev id: ${m[2]}`)
      const recursive = ['true', '1', 'True'].includes(url.searchParams.get('recursive') ?? '')
      return send(res, 200, { 'Content-Type': 'application/json' }, JSON.stringify(tree(m[3] ?? '', recursive)))
    }
    if ((m = /^\/api\/resolve-cache\/models\/([^/]+\/[^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(p))) {
      const f = files.get(m[3])
      if (m[1] !== repo || m[2] !== commit || !f) return notFound(res, 'EntryNotFound', `${m[3]} does not exist`)
      return serveBytes(req, res, f, { ETag: `"${f.oid}"`, 'X-Repo-Commit': commit })
    }
    if ((m = /^\/cdn-lfs\/([0-9a-f]{64})$/.exec(p))) {
      const f = bySha.get(m[1])
      if (!f) return send(res, 404, {}, 'no such object')
      return serveBytes(req, res, f, { ETag: `"${f.sha256}"` })
    }
    if ((m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(p))) {
      if (m[1] !== repo) return notFound(res, 'RepoNotFound', `Repository not found: ${m[1]}`)
      if (!revisionOk(m[2])) return notFound(res, 'RevisionNotFound', `Invalid rev id: ${m[2]}`)
      const f = files.get(m[3])
      if (!f) return notFound(res, 'EntryNotFound', `${m[3]} does not exist on "${m[2]}"`)
      if (f.sha256) {
        return send(res, 302, {
          Location: `${cdnBase}/cdn-lfs/${f.sha256}?response-content-disposition=attachment`,
          'X-Linked-Etag': `"${f.sha256}"`,
          'X-Linked-Size': String(f.size),
          'X-Repo-Commit': commit,
          ETag: `"${f.sha256}"`,
          'Content-Length': '0',
        })
      }
      if (state.relativeRedirect) {
        return send(res, 307, {
          Location: `/api/resolve-cache/models/${repo}/${commit}/${encodeURI(f.rel)}`,
          'X-Repo-Commit': commit,
          'Content-Length': '0',
        })
      }
      return serveBytes(req, res, f, { ETag: `"${f.oid}"`, 'X-Repo-Commit': commit })
    }
    return send(res, 404, {}, 'not found')
  })
  server.on('connection', () => state.connections++)
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  const { port: actual } = server.address()
  base = `http://127.0.0.1:${actual}`
  // Another host name for the same socket: huggingface_hub (and our client)
  // stop a HEAD at a redirect that leaves the hub's host, as on the real hub.
  cdnBase = `http://localhost:${actual}`
  return Object.assign(state, {
    endpoint: base,
    repo,
    commit,
    files,
    server,
    reset() {
      state.log.length = 0
      state.connections = 0
      state.cut = null
      state.corrupt.clear()
      state.throttle = null
      state.servedBytes = {}
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.()
      server.close(() => resolve())
    }),
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [dir, repo] = process.argv.slice(2)
  if (!dir) {
    console.error('usage: node tests/hub_server.mjs MODEL_DIR [REPO_ID]')
    process.exit(2)
  }
  const s = await startHubServer({ modelDir: dir, ...(repo ? { repo } : {}) })
  console.log(JSON.stringify({ endpoint: s.endpoint, repo: s.repo, commit: s.commit }))
}
