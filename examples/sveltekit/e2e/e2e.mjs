// End-to-end check of the built app (`node build` already running), used by
// the repository's scripts/test-examples.sh; it needs playwright-core and a
// Chromium (not dependencies of the app):
//   npm i --no-save playwright-core@1.65.1
//   BASE_URL=http://127.0.0.1:3000 SCREENSHOT=/tmp/search.png node e2e/e2e.mjs
// It checks /api/health, /api/embed (against the addon's own embed(), 1e-6),
// /api/search (GET and POST, and its 400s), then the page in headless
// Chromium: type a query, submit, wait for the ranked list, check the top hit
// and its score, save a screenshot. SKIP_BROWSER=<reason> skips only the browser part.
import assert from 'node:assert/strict'
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { embed } from 'cuda-engine'

const base = process.env.BASE_URL ?? 'http://127.0.0.1:3000'
const screenshot = process.env.SCREENSHOT ?? path.resolve('sveltekit-search.png')
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium'
const log = (msg) => console.log(`e2e: ${msg}`)

// Queries whose nearest sentence is known (hand-written anchors of scripts/sentences.mjs).
const QUERY = 'who lights the lamp at the top of the lighthouse?'
const EXPECT = 'The lighthouse keeper climbed the spiral stairs every evening to light the lamp.'
const QUERY2 = 'bees telling each other where the flowers are'
const EXPECT2 = 'Honeybees perform a waggle dance to tell the hive where the flowers are.'

async function getJson(url, init) {
  const res = await fetch(new URL(url, base), init)
  const type = res.headers.get('content-type') ?? ''
  assert.match(type, /application\/json/, `${url}: content-type ${type}`)
  return { status: res.status, body: await res.json() }
}
const post = (url, body) => getJson(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

// /api/health: engine.health() of the app's engine, with its index.
{
  const { status, body } = await getJson('/api/health')
  assert.equal(status, 200, JSON.stringify(body))
  assert.ok(['ok', 'degraded'].includes(body.status), `health status ${body.status}`)
  assert.equal(body.model?.name, 'all-MiniLM-L6-v2')
  assert.equal(body.model?.dims, 384)
  const index = body.indexes.find((i) => i.name === 'sentences')
  assert.ok(index, `no 'sentences' index in ${JSON.stringify(body.indexes)}`)
  assert.equal(index.count, 300)
  assert.equal(body.startup.sentences, 300)
  log(`/api/health: ${body.status}, backend ${body.backend}, index ${index.count} x ${index.dims} on ${index.device}, start-up ${JSON.stringify(body.startup)}`)
}

// /api/embed: the same numbers as embed() of the addon in this process.
{
  const texts = [EXPECT, 'A completely different sentence about tax returns.']
  const { status, body } = await post('/api/embed', { texts })
  assert.equal(status, 200, JSON.stringify(body))
  assert.equal(body.dims, 384)
  assert.equal(body.embeddings.length, 2)
  const want = await embed(texts)
  let maxDiff = 0
  for (const [i, v] of body.embeddings.entries()) {
    assert.equal(v.length, 384)
    for (let j = 0; j < 384; j++) maxDiff = Math.max(maxDiff, Math.abs(v[j] - want[i][j]))
  }
  assert.ok(maxDiff <= 1e-6, `max |/api/embed - embed()| = ${maxDiff}`)
  log(`/api/embed: 2 x ${body.dims}, max |diff| to embed() ${maxDiff.toExponential(2)}`)
  const bad = await post('/api/embed', { texts: 'not an array' })
  assert.equal(bad.status, 400)
  assert.equal(bad.body.error.code, 'E_INVALID_ARG')
}

// /api/search: GET and POST, best first, and the 400s.
{
  const g = await getJson(`/api/search?q=${encodeURIComponent(QUERY)}&k=5`)
  assert.equal(g.status, 200, JSON.stringify(g.body))
  assert.equal(g.body.hits.length, 5)
  assert.equal(g.body.hits[0].text, EXPECT, JSON.stringify(g.body.hits))
  for (let i = 1; i < 5; i++) assert.ok(g.body.hits[i - 1].score >= g.body.hits[i].score, 'scores best first')
  const p = await post('/api/search', { q: QUERY2, k: 3 })
  assert.equal(p.status, 200, JSON.stringify(p.body))
  assert.equal(p.body.hits[0].text, EXPECT2, JSON.stringify(p.body.hits))
  const empty = await getJson('/api/search?q=&k=3')
  assert.equal(empty.status, 400)
  assert.equal(empty.body.error.code, 'E_INVALID_ARG')
  const bigK = await getJson('/api/search?q=x&k=999')
  assert.equal(bigK.status, 400)
  log(`/api/search: GET top "${g.body.hits[0].text}" (${g.body.hits[0].score.toFixed(4)}), POST top "${p.body.hits[0].text}" (${p.body.hits[0].score.toFixed(4)}), 400 for q='' and k=999`)
}

// The page in a real browser.
if (process.env.SKIP_BROWSER) {
  log(`browser: SKIPPED (${process.env.SKIP_BROWSER})`)
} else {
  const { chromium } = await import('playwright-core')
  const profile = mkdtempSync(path.join(tmpdir(), 'e2e-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 900, height: 720 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  try {
    const page = context.pages()[0] ?? (await context.newPage())
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    await page.goto(base, { waitUntil: 'networkidle' })
    await page.getByTestId('search-input').fill(QUERY)
    await page.getByTestId('search-submit').click()
    await page.waitForSelector('[data-testid="result"]', { timeout: 30_000 })
    await page.waitForFunction((q) => new URL(location.href).searchParams.get('q') === q, QUERY)
    const hits = await page.$$eval('[data-testid="result"]', (els) =>
      els.map((el) => ({
        rank: Number(el.getAttribute('data-rank')),
        text: el.querySelector('[data-testid="result-text"]')?.textContent?.trim(),
        score: Number(el.querySelector('[data-testid="result-score"]')?.getAttribute('data-score')),
      })),
    )
    assert.equal(hits.length, 5, JSON.stringify(hits))
    assert.equal(hits[0].rank, 1)
    assert.equal(hits[0].text, EXPECT, JSON.stringify(hits))
    assert.ok(typeof hits[0].score === 'number' && hits[0].score > 0 && hits[0].score <= 1, `top score ${hits[0].score}`)
    for (let i = 1; i < hits.length; i++) assert.ok(hits[i - 1].score >= hits[i].score, 'scores best first')
    assert.deepEqual(errors, [], 'no errors in the page')
    mkdirSync(path.dirname(screenshot), { recursive: true })
    await page.screenshot({ path: screenshot, fullPage: true })
    log(`browser (${context.browser()?.version() ?? 'chromium'}): "${QUERY}" -> #1 "${hits[0].text}" score ${hits[0].score.toFixed(4)}, ${hits.length} results`)
    log(`screenshot: ${screenshot}`)
  } finally {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  }
}
log('ok')
