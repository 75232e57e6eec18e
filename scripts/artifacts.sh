#!/usr/bin/env bash
# What a release job runs (`npm run artifacts`): build the addon and the
# cuda-worker binary in release mode, put them into their platform package
# (napi-rs: `napi artifacts`, then `napi pre-publish -t npm
# --skip-optional-publish --no-gh-release`, which writes cuda-engine's
# optionalDependencies on every platform package at the same version), and
# `npm pack` every package into one folder:
#
#   bash scripts/artifacts.sh [OUT_DIR]      # default dist/ (git-ignored)
#   npm publish dist/cuda-engine-linux-x64-gnu-<v>.tgz && npm publish dist/cuda-engine-<v>.tgz
#
# The packages are assembled in OUT_DIR/stage (a copy of what `npm pack`
# would ship from the repository, plus npm/), so the working tree's
# package.json and npm/ stay as committed. ARTIFACTS_SKIP_BUILD=1 packs what
# is already built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "${ARTIFACTS_SKIP_BUILD:-0}" != 1 ]; then
  npx napi build --platform --release
  # The same feature set as the test command's build, so it reuses its cache.
  cargo build --release --workspace --bins
fi

version=$(node -p 'require("./package.json").version')
# The platform packages this host can fill: npm/<name> whose binaries are built.
# Only linux-x64-gnu is built here (README "Packaging" says what the others get).
platforms=()
for dir in npm/*/; do
  name=$(basename "$dir")
  if [ -f "cuda-engine.$name.node" ]; then platforms+=("$name"); fi
done
[ "${#platforms[@]}" -gt 0 ] || { echo "artifacts: no built cuda-engine.<platform>.node at the repo root" >&2; exit 1; }

stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage/npm"
rm -f "$out"/*.tgz

# The root package: exactly the files `npm pack` takes from the repository.
node -e '
  const { execFileSync } = require("node:child_process")
  const fs = require("node:fs"), path = require("node:path")
  const [pack] = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { encoding: "utf8" }))
  for (const { path: f } of pack.files) {
    const to = path.join(process.argv[1], f)
    fs.mkdirSync(path.dirname(to), { recursive: true })
    fs.copyFileSync(f, to)
    fs.chmodSync(to, fs.statSync(f).mode & 0o777)
  }' "$stage"
for name in "${platforms[@]}"; do
  mkdir -p "$stage/npm/$name"
  cp "npm/$name/package.json" "npm/$name/README.md" "$stage/npm/$name/"
  cp "cuda-engine.$name.node" "$stage/"
done
# Only the targets built here: pre-publish lists every napi target as an optional dependency.
node -e '
  const fs = require("node:fs"), f = process.argv[1] + "/package.json"
  const pkg = JSON.parse(fs.readFileSync(f, "utf8"))
  const built = process.argv.slice(2)
  const id = (t) => t.replace("x86_64-unknown-linux-gnu", "linux-x64-gnu").replace("aarch64-unknown-linux-gnu", "linux-arm64-gnu").replace("x86_64-unknown-linux-musl", "linux-x64-musl")
  pkg.napi.targets = pkg.napi.targets.filter((t) => built.includes(id(t)))
  fs.writeFileSync(f, JSON.stringify(pkg, null, 2) + "\n")' "$stage" "${platforms[@]}"

napi() { (cd "$stage" && "$repo/node_modules/.bin/napi" "$@" >>"$out/napi.log" 2>&1) || { cat "$out/napi.log" >&2; exit 1; }; }
rm -f "$out/napi.log"
napi artifacts --output-dir . --npm-dir npm
for name in "${platforms[@]}"; do
  worker=target/release/cuda-worker
  [ -x "$worker" ] || { echo "artifacts: $worker is not built" >&2; exit 1; }
  install -m 755 "$worker" "$stage/npm/$name/cuda-worker"
  [ -f "$stage/npm/$name/cuda-engine.$name.node" ] || { echo "artifacts: napi artifacts did not place cuda-engine.$name.node" >&2; exit 1; }
done
napi pre-publish -t npm --skip-optional-publish --no-gh-release

# The published root package must name every platform package at its own version.
node -e '
  const pkg = require(process.argv[1] + "/package.json")
  const want = process.argv.slice(2).map((n) => `cuda-engine-${n}`)
  for (const n of want) if (pkg.optionalDependencies?.[n] !== pkg.version) { console.error(`artifacts: optionalDependencies.${n} is ${pkg.optionalDependencies?.[n]}, want ${pkg.version}`); process.exit(1) }
  for (const k of ["preinstall", "install", "postinstall"]) if (pkg.scripts?.[k]) { console.error(`artifacts: the package has an ${k} script`); process.exit(1) }' "$stage" "${platforms[@]}"

for name in "${platforms[@]}"; do
  (cd "$stage/npm/$name" && npm pack --silent --ignore-scripts --pack-destination "$out" >/dev/null)
done
(cd "$stage" && npm pack --silent --ignore-scripts --pack-destination "$out" >/dev/null)

echo "artifacts: cuda-engine $version -> $out"
for f in "$out"/*.tgz; do
  printf '  %-40s %10s bytes  (%s)\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(du -h "$f" | cut -f1)"
done
