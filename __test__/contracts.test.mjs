// Single-source contracts (issue 9): the error-code table, the option names
// and the README's TypeScript examples each exist once, and every copy of
// them (README, index.d.ts, docs/error-codes.json, examples/) must agree.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { addon, require } from './helpers.mjs'

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..')
const read = (rel) => fs.readFileSync(path.join(root, rel), 'utf8')
const readme = read('README.md')
const table = JSON.parse(read('docs/error-codes.json'))

/** `name()` exported by the addon, or a failure saying that the Rust side must provide it. */
function exported(name) {
  assert.equal(
    typeof addon[name],
    'function',
    `the addon exports no ${name}() (issue 9: generated from the Rust side; rebuild with npx napi build --platform --release)`,
  )
  return addon[name]()
}

// ---------------------------------------------------------------- error codes

/** Rows of the README table whose header is `| code | meaning | HTTP |`. */
function readmeErrorTable() {
  const lines = readme.split('\n')
  const head = lines.findIndex((l) => /^\|\s*code\s*\|\s*meaning\s*\|\s*HTTP\s*\|\s*$/.test(l))
  assert.ok(head >= 0, 'README.md has no `| code | meaning | HTTP |` table')
  const rows = []
  for (const line of lines.slice(head + 2)) {
    if (!line.startsWith('|')) break
    const cells = line.split('|').slice(1, -1).map((c) => c.trim())
    assert.equal(cells.length, 3, `README error table row: ${line}`)
    const [code, meaning, http] = cells
    assert.match(code, /^`E_[A-Z0-9_]+`$/, `README error table: a code in backticks: ${line}`)
    assert.match(http, /^\d{3}$/, `README error table: an HTTP status: ${line}`)
    rows.push({ code: code.slice(1, -1), http_status: Number(http), meaning })
  }
  return rows
}

test('docs/error-codes.json is a well-formed table', () => {
  assert.ok(Array.isArray(table) && table.length > 0)
  const codes = table.map((e) => e.code)
  assert.equal(new Set(codes).size, codes.length, 'duplicate codes')
  for (const e of table) {
    assert.deepEqual(Object.keys(e).sort(), ['code', 'http_status', 'meaning'], JSON.stringify(e))
    assert.match(e.code, /^E_[A-Z0-9_]+$/)
    assert.ok(Number.isInteger(e.http_status) && e.http_status >= 400 && e.http_status <= 599, e.code)
    assert.ok(e.meaning.length > 0, e.code)
  }
  assert.ok(codes.includes('E_CLOSED'), 'E_CLOSED is in the table')
})

test('errorCodes() from the addon equals docs/error-codes.json', () => {
  assert.deepEqual(exported('errorCodes'), table)
})

test("the README's error table equals docs/error-codes.json (code, meaning, HTTP status, order)", () => {
  assert.deepEqual(readmeErrorTable(), table)
})

test('docs/design.md names every error code', () => {
  const design = read('docs/design.md')
  for (const { code } of table) assert.ok(design.includes(`\`${code}\``), `docs/design.md does not name ${code}`)
})

test('README.md and docs/ link nothing outside the repository (no ../shared)', () => {
  const docs = fs.readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)
  for (const file of ['README.md', ...docs]) {
    const text = read(file)
    assert.ok(!text.includes('../shared'), `${file} refers to ../shared, which a user of the repository does not have`)
  }
})

// ---------------------------------------------------------------- index.d.ts

const ts = require('typescript')
const dts = ts.createSourceFile('index.d.ts', read('index.d.ts'), ts.ScriptTarget.Latest, true)

function declarations(kind) {
  const out = new Map()
  for (const s of dts.statements) {
    if (s.kind === kind && s.name) out.set(s.name.text, [...(out.get(s.name.text) ?? []), s])
  }
  return out
}
const interfaces = declarations(ts.SyntaxKind.InterfaceDeclaration)
const aliases = declarations(ts.SyntaxKind.TypeAliasDeclaration)

/** Property names of an interface in index.d.ts, its own and (with `inherited`) those of the interfaces it extends. */
function members(name, inherited = true) {
  const decls = interfaces.get(name)
  assert.ok(decls, `index.d.ts declares no interface ${name}`)
  const names = []
  for (const d of decls) {
    for (const m of d.members) {
      assert.notEqual(m.kind, ts.SyntaxKind.IndexSignature, `${name} has an index signature ([key: string]: ...): typos would type-check`)
      assert.ok(m.name, `${name}: a member without a name`)
      names.push(m.name.text ?? m.name.getText(dts))
    }
    if (!inherited) continue
    for (const clause of d.heritageClauses ?? []) {
      for (const t of clause.types) names.push(...members(t.expression.getText(dts)))
    }
  }
  return names
}
const sorted = (xs) => [...xs].sort()

test('index.d.ts: the option types are closed and equal optionNames() from the schema', () => {
  const expected = {
    engine: members('EngineOptions'),
    worker: members('WorkerOptions'),
    remote: members('RemoteOptions'),
    call: members('CallOptions'),
    embed: members('EmbedOptions'),
    close: members('CloseOptions'),
  }
  assert.deepEqual(sorted(members('EmbedOptions', false).concat(members('CallOptions'))), sorted(expected.embed))
  const names = exported('optionNames')
  assert.deepEqual(sorted(Object.keys(names)), sorted(Object.keys(expected)), 'optionNames() groups')
  for (const [group, typed] of Object.entries(expected)) {
    assert.deepEqual(sorted(names[group]), sorted(typed), `optionNames().${group} (the Rust schema) vs index.d.ts`)
  }
})

test('index.d.ts: ErrorCode lists exactly the codes of docs/error-codes.json', () => {
  const decl = aliases.get('ErrorCode')?.[0]
  assert.ok(decl, 'index.d.ts declares no type ErrorCode')
  assert.ok(ts.isUnionTypeNode(decl.type), 'ErrorCode is a union of string literals')
  const codes = decl.type.types.map((t) => {
    assert.ok(ts.isLiteralTypeNode(t) && ts.isStringLiteral(t.literal), `ErrorCode member ${t.getText(dts)}`)
    return t.literal.text
  })
  assert.deepEqual(codes, table.map((e) => e.code))
})

test('README: every option of index.d.ts is documented', () => {
  for (const iface of ['EngineOptions', 'WorkerOptions', 'RemoteOptions', 'CallOptions', 'EmbedOptions', 'CloseOptions']) {
    for (const name of members(iface)) assert.ok(readme.includes(name), `README.md does not mention ${iface}.${name}`)
  }
})

// ---------------------------------------------------------------- examples

/** README ```ts blocks whose first line is `// examples/...`: [{ file, code }]. */
function readmeExampleBlocks() {
  const blocks = []
  for (const m of readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
    const first = m[1].split('\n', 1)[0]
    const named = /^\/\/ (examples\/\S+)$/.exec(first)
    if (named) blocks.push({ file: named[1], code: m[1] })
  }
  return blocks
}

/** The example sources that the README must show: examples/ts/**.ts but checks/ and node_modules/. */
function exampleFiles(dir = 'examples/ts') {
  const out = []
  for (const ent of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${ent.name}`
    if (ent.isDirectory()) {
      if (ent.name !== 'node_modules' && ent.name !== 'checks') out.push(...exampleFiles(rel))
    } else if (ent.name.endsWith('.ts')) out.push(rel)
  }
  return out
}

test("the README's TypeScript examples are the files in examples/ts/, character for character", () => {
  const blocks = readmeExampleBlocks()
  const files = exampleFiles()
  for (const want of ['examples/ts/orchestrator.ts', 'examples/ts/sveltekit/src/routes/api/embed/+server.ts']) {
    assert.ok(files.includes(want), `${want} exists`)
  }
  assert.deepEqual(sorted(blocks.map((b) => b.file)), sorted(files), 'README blocks starting `// examples/...` vs the example files')
  for (const { file, code } of blocks) {
    assert.equal(code, read(file), `README's block for ${file} differs from the file`)
  }
})
