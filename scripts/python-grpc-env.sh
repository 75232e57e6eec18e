#!/usr/bin/env bash
# The Python gRPC peers the interop tests use (docs/grpc.md "Tests"):
# tritonclient[grpc] (a real Open Inference Protocol client) and MLServer (a
# real Open Inference Protocol server, CPU, no torch), pinned, in one venv at
# .venv-grpc. Idempotent: does nothing when the venv already has them.
# Prints the venv's python path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-grpc

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tritonclient.grpc, mlserver' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "tritonclient[grpc]==2.73.0" "mlserver==1.7.1" "uvloop<0.22" >&2
fi
echo "$PWD/$venv/bin/python"
