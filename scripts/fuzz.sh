#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (docs/reliability.md, "Fuzzing").
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Targets: every [[bin]] of fuzz/Cargo.toml (`cargo fuzz list`): envelope,
# base64, cbor_msgpack, worker_protocol, infer_request, index_file (the
# vector index file loader), grpc_messages (protobuf tensors of the gRPC
# server and client; seeds from fuzz/gen_grpc_corpus.py); a new target is registered there and gets its
# seeds in fuzz/corpus/<target>/.
#
# Installs cargo-fuzz (pinned, skipped when that version is present), builds
# every target of fuzz/ once, then runs each target for the given time
# (default 60 s; all targets when none is named) on a working copy of its
# committed seed corpus (fuzz/corpus/<target>/ is read, never written: new
# inputs go to fuzz/target/corpus/<target>/). Prints execs, execs/s and
# coverage per target; exits 1 if any target crashed, leaked, timed out or
# ran out of memory (the input is saved under fuzz/artifacts/<target>/ and
# the reproducer command is printed).
#
# Environment:
#   FUZZ_SANITIZER=none|address  default none: stable Rust, no bootstrap,
#                      ~6x the execs/s. address builds with ASan through
#                      RUSTC_BOOTSTRAP=1 (a separate, slower build).
#   FUZZ_JOBS=N        parallel libFuzzer workers per target (default 1).
#   FUZZ_ARGS="..."    extra libFuzzer flags.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${1:-60}
shift || true
SANITIZER=${FUZZ_SANITIZER:-none}

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 64
fi

if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

ALL_TARGETS=$(cargo fuzz list)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS <<<"$ALL_TARGETS"
fi
for t in "${TARGETS[@]}"; do
  if ! grep -qx "$t" <<<"$ALL_TARGETS"; then
    echo "fuzz: no target '$t' (targets: $(echo $ALL_TARGETS))" >&2
    exit 64
  fi
done

FUZZ_FLAGS=(--sanitizer "$SANITIZER")
if [ "$SANITIZER" != none ]; then
  export RUSTC_BOOTSTRAP=1 # -Zsanitizer on the stable toolchain (fuzz/ only)
fi

start=$(date +%s)
cargo fuzz build "${FUZZ_FLAGS[@]}" >&2
echo "fuzz: built ${#TARGETS[@]} target(s) in $(($(date +%s) - start)) s (sanitizer: $SANITIZER)" >&2

failed=()
summary=()
for t in "${TARGETS[@]}"; do
  work=fuzz/target/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
  log=fuzz/target/fuzz-$t.log
  before=$(find "$artifacts" -type f | sort)
  jobs=()
  if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
  echo "fuzz: $t for ${SECONDS_PER_TARGET} s" >&2
  rc=0
  # shellcheck disable=SC2086
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    "${jobs[@]}" -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || rc=$?
  if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log; fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}' || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | awk '{print $2}' | sort -n | tail -1 || true)
  new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')
  status=ok
  if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
    status=FAILED
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); log: $log" >&2
    grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -20 >&2 || true
    tail -40 "$log" >&2
    for a in $new; do
      echo "fuzz: reproduce: cargo fuzz run --sanitizer $SANITIZER $t $a" >&2
    done
  fi
  line=$(printf '%-16s %-6s execs=%s execs/s=%s cov=%s ft=%s corpus=%s peak_rss_mb=%s' \
    "$t" "$status" "${execs:-0}" "${rate:-0}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}")
  summary+=("$line")
  echo "$line"
done

echo "fuzz: summary (${SECONDS_PER_TARGET} s per target, sanitizer $SANITIZER)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
