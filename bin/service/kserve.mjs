// KServe v2 / Open Inference Protocol REST (docs/service.md "KServe v2"):
// the JSON form of what `cuda-worker --grpc` serves over gRPC, answered
// from the same engine calls (`models()`, `infer()`).
//
//   GET  /v2                                   server metadata
//   GET  /v2/health/live | /v2/health/ready    probes (ready: 503 while stopping or unloaded)
//   GET  /v2/models/{name}[/versions/{v}]      model metadata
//   GET  /v2/models/{name}[/versions/{v}]/ready
//   POST /v2/models/{name}[/versions/{v}]/infer  body: an inference request as infer() takes it

const MODEL_PATH = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer)?$/

/** The JSON text of a tensor's data: typed arrays joined (exact for BigInt64), others as JSON. */
function dataJson(data) {
  if (ArrayBuffer.isView(data) && !(data instanceof DataView) && !Buffer.isBuffer(data)) return `[${data.join(',')}]`
  return JSON.stringify(data, (_k, v) => (Buffer.isBuffer(v) ? v.toString('base64') : v))
}

/** An InferResponse as the protocol's JSON (typed arrays become flat number arrays). */
export function inferResponseJson(r) {
  const head = { model_name: r.model_name, model_version: r.model_version ?? '1', id: r.id, ...(r.parameters ? { parameters: r.parameters } : {}) }
  const outputs = r.outputs.map((o) => {
    const { data, ...rest } = o
    return `${JSON.stringify(rest).slice(0, -1)},"data":${dataJson(data)}}`
  })
  return `${JSON.stringify(head).slice(0, -1)},"outputs":[${outputs.join(',')}]}`
}

/** `svc`: { engine, served, readJson, requireJson, httpError, abortOnClose, send, sendText, getOnly, ready, version }. */
export function kserveRoutes(svc) {
  const notFound = (name, version, served) =>
    svc.httpError(404, 'E_UNKNOWN_MODEL', `no model ${JSON.stringify(name)}${version ? ` version ${JSON.stringify(version)}` : ''} here (this server serves ${JSON.stringify(served)} version "1")`)

  /** The served model's metadata when the path names it (any version but "1" is unknown). */
  async function model(name, version) {
    const all = await svc.engine.models()
    const m = all.find((x) => x.name === name)
    if (!m || (version !== undefined && !m.versions.includes(version))) throw notFound(name, version, all.map((x) => x.name).join(', '))
    return m
  }

  /** Throws the 404 unless the path names the served model (version "1" or none):
   * the check of the hot routes, from the service's cached name instead of a
   * models() call per request. */
  async function checkServed(name, version) {
    const served = await svc.served()
    if (name !== served.name || (version !== undefined && version !== '1')) throw notFound(name, version, served.name)
  }

  async function byModel(req, res, ctx, url) {
    const m = MODEL_PATH.exec(url.pathname)
    let name, version
    try {
      name = decodeURIComponent(m[1])
      version = m[2] === undefined ? undefined : decodeURIComponent(m[2])
    } catch {
      throw svc.httpError(400, 'E_INVALID_ARG', 'the model name in the path is not valid percent-encoding')
    }
    const action = m[3] ?? ''
    const want = action === '/infer' ? 'POST' : 'GET'
    if (req.method !== want && !(want === 'GET' && req.method === 'HEAD'))
      throw svc.httpError(405, 'E_INVALID_ARG', `use ${want} ${url.pathname}`, { allow: want })
    if (action === '/ready') {
      const ready = svc.ready()
      if (ready) await checkServed(name, version)
      return svc.send(res, ready ? 200 : 503, { name, ready })
    }
    if (action === '') {
      const meta = await model(name, version)
      return svc.send(res, 200, meta)
    }
    svc.requireJson(req)
    const body = await svc.readJson(req, ctx)
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw svc.httpError(400, 'E_INVALID_ARG', 'the body must be a JSON inference request: {"inputs": [...]}')
    for (const k of ['model_name', 'model_version'])
      if (k in body) throw svc.httpError(400, 'E_INVALID_ARG', `\`${k}\` is not a body field here: the path names the model`)
    await checkServed(name, version)
    const request = { ...body, model_name: name, ...(version !== undefined ? { model_version: version } : {}) }
    // target 'local': a REST request names the model this service loaded, never a worker's.
    const r = await svc.engine.infer(request, { signal: svc.abortOnClose(res), target: 'local' })
    return svc.sendText(res, 200, inferResponseJson(r))
  }

  const get = svc.getOnly
  return [
    { path: '/v2', handler: get((_q, res) => svc.send(res, 200, { name: 'cuda-engine', version: svc.version, extensions: [] })) },
    { path: '/v2/health/live', open: true, handler: get((_q, res) => svc.send(res, 200, { live: true })) },
    { path: '/v2/health/ready', handler: get((_q, res) => svc.send(res, svc.ready() ? 200 : 503, { ready: svc.ready() })) },
    {
      match: (p) => MODEL_PATH.test(p),
      route: (p) => {
        const [, , version, action = ''] = MODEL_PATH.exec(p)
        return `/v2/models/{name}${version ? '/versions/{version}' : ''}${action}`
      },
      handler: byModel,
    },
  ]
}
