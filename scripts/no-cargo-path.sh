# Sourced by scripts/test-registry.sh and scripts/test-examples.sh: a PATH
# with node, npm and the base system but no cargo or rustc, so an install
# that would build from source fails instead of quietly using the toolchain.
#
# no_cargo_path DIR: links node, npm, npx (and sh, env when /usr/bin must go)
# into DIR/bin and prints the PATH; returns 1 when none can be built.
no_cargo_path() {
  local bin=$1/bin p t
  mkdir -p "$bin"
  for t in node npm npx; do ln -s "$(command -v $t)" "$bin/$t"; done
  p=$bin:/usr/local/bin:/usr/bin:/bin
  if PATH=$p command -v cargo >/dev/null || PATH=$p command -v rustc >/dev/null; then
    p=$bin:/bin
    for t in sh env; do [ -e "$bin/$t" ] || ln -s "$(command -v $t)" "$bin/$t"; done
  fi
  if PATH=$p command -v cargo >/dev/null || PATH=$p command -v rustc >/dev/null; then
    return 1
  fi
  echo "$p"
}
