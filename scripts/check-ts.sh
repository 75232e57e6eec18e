#!/usr/bin/env bash
# TypeScript gate (issue 9): the README's TypeScript examples (examples/ts/,
# the same code as the README blocks; __test__/contracts.test.mjs compares
# them) type-check under --strict against this repository's index.d.ts, the
# declarations compile on their own, and the closed option types reject
# misspelled keys at compile time.
#   bash scripts/check-ts.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The examples' own dev dependencies (typescript, @sveltejs/kit, @types/node), from their lock file.
if [ ! -x examples/ts/node_modules/.bin/tsc ]; then
  (cd examples/ts && npm ci --no-audit --no-fund)
fi
tsc=examples/ts/node_modules/.bin/tsc

echo "check-ts: $($tsc --version): index.d.ts on its own (--strict, no skipLibCheck)"
$tsc --strict --noEmit --target es2022 --module nodenext --lib es2022,dom \
  --typeRoots examples/ts/node_modules/@types --types node index.d.ts

echo "check-ts: tsc --strict --noEmit -p examples"
$tsc --strict --noEmit -p examples

# examples/orchestrator against this repository's index.d.ts (its own install,
# from the npm tarballs, is type-checked by scripts/test-examples.sh, as is
# examples/sveltekit, which needs svelte-kit sync).
echo "check-ts: tsc --strict --noEmit examples/orchestrator"
otmp=$(mktemp -d)
cat >"$otmp/tsconfig.json" <<JSON
{ "extends": "$PWD/examples/orchestrator/tsconfig.json",
  "compilerOptions": { "noEmit": true, "typeRoots": ["$PWD/examples/ts/node_modules/@types"], "paths": { "cuda-engine": ["$PWD/index.d.ts"] } },
  "include": ["$PWD/examples/orchestrator/src/**/*.ts"] }
JSON
$tsc --strict -p "$otmp/tsconfig.json" || { rm -rf "$otmp"; exit 1; }
rm -rf "$otmp"

# Negative check. examples/ts/checks/option-typos.ts has a `// @ts-expect-error
# KEY: ...` line above each misspelled option, so the run above passing means
# each of those lines is an error. Strip the directives and make sure that tsc
# now fails, and that each error is the unknown KEY (not some other error that
# a directive would also have swallowed).
typos=examples/ts/checks/option-typos.ts
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -v '@ts-expect-error' "$typos" >"$tmp/typos.ts"
cat >"$tmp/tsconfig.json" <<JSON
{ "extends": "$PWD/examples/tsconfig.json", "include": [], "files": ["$tmp/typos.ts"] }
JSON
if $tsc --strict --noEmit -p "$tmp/tsconfig.json" >"$tmp/out.txt" 2>&1; then
  echo "check-ts: FAIL: $typos compiles without its @ts-expect-error lines: the option types accept misspelled keys" >&2
  exit 1
fi
keys=$(sed -n 's#^ *// @ts-expect-error \([A-Za-z_]*\):.*#\1#p' "$typos")
[ -n "$keys" ] || { echo "check-ts: FAIL: no '// @ts-expect-error KEY: ...' lines in $typos" >&2; exit 1; }
want=$(echo "$keys" | wc -l)
got=$(grep -c 'error TS' "$tmp/out.txt" || true)
bad=0
for k in $keys; do
  if ! grep -q "'$k' does not exist in type" "$tmp/out.txt"; then
    echo "check-ts: FAIL: no 'unknown property $k' error in $typos" >&2
    bad=1
  fi
done
if [ "$got" != "$want" ]; then
  echo "check-ts: FAIL: $want misspelled keys but $got errors" >&2
  bad=1
fi
if [ "$bad" != 0 ]; then cat "$tmp/out.txt" >&2; exit 1; fi
echo "check-ts: the option types reject: $(echo $keys | tr ' ' ',')"
echo "check-ts: ok"
