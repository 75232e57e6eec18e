#!/usr/bin/env bash
# The Go package's checks (go/, docs/go.md): installs Debian's golang-go when
# `go` is missing, then gofmt, go vet (linux and windows) and go test from go/.
#
# Standard library only: nothing is downloaded (GOPROXY=off). The runner and
# client tests use target/release/cuda-worker and the built addon
# (cuda-engine.linux-x64-gnu.node); without them they print SKIPPED, and with
# CI_REQUIRE_WORKER=1 they fail instead.
set -euo pipefail
cd "$(dirname "$0")/../go"

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/lib/go/bin/go ]; then
    export PATH="/usr/lib/go/bin:$PATH"
  else
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y golang-go || { $sudo apt-get update && $sudo apt-get install -y golang-go; }
  fi
fi
go version

export GOPROXY=off GOFLAGS=-mod=readonly GOTOOLCHAIN=local
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
  echo "gofmt: these files need formatting:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
GOOS=windows go vet ./...
go test -count=1 ./...
