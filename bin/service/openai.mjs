// POST /v1/embeddings: OpenAI's embeddings API over the engine's model
// (docs/service.md "OpenAI embeddings"). The official `openai` client works
// against it unchanged (its default `encoding_format` is base64).
//
// Texts go through `infer()` with a `text` input, which tokenizes exactly
// like `embed()` and also returns the attention mask the usage is counted
// from; token-id arrays go in as `input_ids` (as `infer()` takes them).

/** Keys of OpenAI's request body; any other key is an error naming it (the project's rule). */
const KEYS = ['input', 'model', 'encoding_format', 'dimensions', 'user']
/** Texts per engine call when a reply streams (NDJSON): bounds what is held at once. */
export const STREAM_CHUNK = 256
/** Engine calls in flight while streaming, so the next chunk computes while one is written. */
const STREAM_AHEAD = 2

/**
 * The request body, checked: { texts | ids, n, format, dimensions, model }.
 * `bad(message, param)` builds the 400 to throw.
 */
export function parseEmbeddingsRequest(body, bad) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw bad('the body must be a JSON object like {"input": "...", "model": "..."}', null)
  for (const k of Object.keys(body)) if (!KEYS.includes(k)) throw bad(`unknown field \`${k}\` (fields: ${KEYS.join(', ')})`, k)
  const { input, model, encoding_format: format = 'float', dimensions } = body
  // `model` may be left out (as text-embeddings-inference allows): the served model.
  if (model !== undefined && (typeof model !== 'string' || model === '')) throw bad('`model` must be the name of the served model (GET /v1/models lists it), or left out', 'model')
  if (format !== 'float' && format !== 'base64') throw bad(`\`encoding_format\` must be "float" or "base64", got ${JSON.stringify(format)}`, 'encoding_format')
  if (dimensions !== undefined && dimensions !== null && !(Number.isSafeInteger(dimensions) && dimensions >= 1))
    throw bad(`\`dimensions\` must be a positive integer, got ${JSON.stringify(dimensions)}`, 'dimensions')
  if (body.user !== undefined && typeof body.user !== 'string') throw bad('`user` must be a string', 'user')
  const out = { model, format, dimensions: dimensions ?? null }
  if (typeof input === 'string') return { ...out, texts: [input], n: 1 }
  if (!Array.isArray(input) || input.length === 0)
    throw bad('`input` must be a string, a non-empty array of strings, an array of token ids, or an array of token-id arrays', 'input')
  if (input.every((x) => typeof x === 'string')) return { ...out, texts: input, n: input.length }
  const isIds = (a) => Array.isArray(a) && a.length > 0 && a.every((t) => Number.isSafeInteger(t) && t >= 0)
  if (isIds(input)) return { ...out, ids: [input], n: 1 }
  for (let i = 0; i < input.length; i++)
    if (!isIds(input[i]))
      throw bad(`\`input[${i}]\` must be ${typeof input[0] === 'string' ? 'a string (every element of one array has one kind)' : 'a non-empty array of token ids (integers >= 0)'}`, 'input')
  return { ...out, ids: input, n: input.length }
}

/** `model` names the served model: its name, or a hub id ending in it (`sentence-transformers/<name>`). */
export function servesModel(requested, served) {
  return requested === served || requested.endsWith(`/${served}`)
}

/**
 * The engine request for items [from, to) of a parsed body: the texts as a
 * BYTES `text` input, or the id arrays right-padded into `input_ids` +
 * `attention_mask`.
 */
function inferRequest(req, servedName, from, to) {
  const outputs = [{ name: 'sentence_embedding' }]
  if (req.texts) {
    const texts = req.texts.slice(from, to)
    return {
      model_name: servedName,
      inputs: [{ name: 'text', datatype: 'BYTES', shape: [texts.length], data: texts }],
      outputs: [...outputs, { name: 'attention_mask' }],
    }
  }
  const rows = req.ids.slice(from, to)
  const seq = Math.max(...rows.map((r) => r.length))
  const ids = new BigInt64Array(rows.length * seq)
  const mask = new BigInt64Array(rows.length * seq)
  rows.forEach((r, b) => {
    for (let j = 0; j < r.length; j++) {
      ids[b * seq + j] = BigInt(r[j])
      mask[b * seq + j] = 1n
    }
  })
  return {
    model_name: servedName,
    inputs: [
      { name: 'input_ids', datatype: 'INT64', shape: [rows.length, seq], data: ids },
      { name: 'attention_mask', datatype: 'INT64', shape: [rows.length, seq], data: mask },
    ],
    outputs,
  }
}

/** Tokens the engine ran for a chunk: the mask's ones (texts) or the ids given. */
function countTokens(req, response, from, to) {
  if (req.ids) return req.ids.slice(from, to).reduce((s, r) => s + r.length, 0)
  const mask = response.outputs.find((o) => o.name === 'attention_mask').data
  let n = 0
  for (let i = 0; i < mask.length; i++) n += mask[i] === 1n ? 1 : 0
  return n
}

/**
 * One embedding as OpenAI sends it: the first `dims` values, re-normalized
 * when truncated (OpenAI's `dimensions` semantics), as numbers or base64 of
 * little-endian float32.
 */
function encodeEmbedding(flat, row, width, dims, format) {
  let v = flat.subarray(row * width, row * width + dims)
  if (dims < width) {
    let ss = 0
    for (let i = 0; i < dims; i++) ss += v[i] * v[i]
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 1
    v = Float32Array.from(v, (x) => x * inv)
  }
  if (format === 'base64') return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')
  return Array.from(v)
}

/**
 * Runs a parsed request in chunks, calling `onChunk({from, to, data, tokens})`
 * in order; keeps STREAM_AHEAD engine calls in flight.
 */
async function runChunks(engine, req, model, { chunk, signal, onChunk }) {
  const width = model.dims
  const dims = req.dimensions ?? width
  const starts = []
  for (let from = 0; from < req.n; from += chunk) starts.push(from)
  const launch = (from) => {
    const to = Math.min(req.n, from + chunk)
    return engine.infer(inferRequest(req, model.name, from, to), { signal }).then((r) => ({ from, to, r }))
  }
  const pending = starts.slice(0, STREAM_AHEAD).map(launch)
  // Rejections of calls not awaited yet are seen when their turn comes.
  pending.forEach((p) => p.catch(() => {}))
  for (let i = 0; i < starts.length; i++) {
    const { from, to, r } = await pending[i]
    if (i + STREAM_AHEAD < starts.length) {
      const next = launch(starts[i + STREAM_AHEAD])
      next.catch(() => {})
      pending.push(next)
    }
    const flat = r.outputs.find((o) => o.name === 'sentence_embedding').data
    const data = []
    for (let b = 0; b < to - from; b++) data.push({ object: 'embedding', index: from + b, embedding: encodeEmbedding(flat, b, width, dims, req.format) })
    await onChunk({ from, to, data, tokens: countTokens(req, r, from, to) })
  }
}

/**
 * The route. `svc`: { engine, served() -> {name, dims}, readJson, httpError,
 * abortOnClose, send, startStream }.
 */
export function openaiRoutes(svc) {
  const bad = (message, param) => svc.httpError(400, 'E_INVALID_ARG', message, { param })

  async function embeddings(req, res, ctx, url) {
    svc.requireJson(req)
    const body = await svc.readJson(req, ctx)
    const parsed = parseEmbeddingsRequest(body, bad)
    const model = await svc.served()
    if (parsed.model !== undefined && !servesModel(parsed.model, model.name))
      throw svc.httpError(404, 'E_UNKNOWN_MODEL', `the model \`${parsed.model}\` is not served here (this service serves \`${model.name}\`)`, { param: 'model' })
    if (parsed.dimensions !== null && parsed.dimensions > model.dims)
      throw bad(`\`dimensions\` is ${parsed.dimensions}, over the model's ${model.dims}`, 'dimensions')
    const signal = svc.abortOnClose(res)
    const accept = String(req.headers.accept ?? '').toLowerCase()
    const stream = url.searchParams.get('stream') === '1' || accept.includes('application/x-ndjson')
    let tokens = 0
    if (!stream) {
      const data = []
      // One engine call: the engine batches it; the chunking is only for streams.
      await runChunks(svc.engine, parsed, model, {
        chunk: parsed.n,
        signal,
        onChunk: (c) => {
          data.push(...c.data)
          tokens += c.tokens
        },
      })
      return svc.send(res, 200, { object: 'list', data, model: model.name, usage: { prompt_tokens: tokens, total_tokens: tokens } })
    }
    // NDJSON: one line per embedding, a progress line per chunk, a usage line
    // last; an error after the headers went out is an error line.
    const out = svc.startStream(res, ctx)
    try {
      await runChunks(svc.engine, parsed, model, {
        chunk: STREAM_CHUNK,
        signal,
        onChunk: async (c) => {
          tokens += c.tokens
          for (const d of c.data) await out.line(d)
          await out.line({ object: 'progress', done: c.to, total: parsed.n })
        },
      })
      await out.line({ object: 'usage', model: model.name, usage: { prompt_tokens: tokens, total_tokens: tokens } })
    } catch (err) {
      if (res.destroyed) throw Object.assign(err instanceof Error ? err : new Error(String(err)), { aborted: true })
      const code = typeof err?.code === 'string' && err.code.startsWith('E_') ? err.code : 'E_INTERNAL'
      ctx.code = code
      await out.line({ object: 'error', error: openaiError(code, svc.statusFor(code), String(err?.message ?? err), null) })
    }
    out.end()
  }

  async function models(req, res) {
    const model = await svc.served()
    return svc.send(res, 200, { object: 'list', data: [{ id: model.name, object: 'model', created: 0, owned_by: 'cuda-engine' }] })
  }

  return [
    { method: 'POST', path: '/v1/embeddings', handler: embeddings },
    { method: 'GET', path: '/v1/models', handler: models },
  ]
}

/** OpenAI's error object: `type` from the status, `code` the engine's stable code. */
export function openaiError(code, status, message, param) {
  const type =
    status === 401 ? 'authentication_error' : status === 403 ? 'permission_error' : status === 404 ? 'not_found_error' : status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error'
  return { message, type, param: param ?? null, code }
}
