// Package cudaengine gives Go services the cuda-engine's behaviour from one
// place instead of ad-hoc path checks and exec.Command calls:
//
//   - FindCudaWorkerPath / DiscoveryCandidates: which cuda-worker binary to
//     run, with exactly the rules of docs/discovery.md (checked against
//     tests/discovery_cases.json, the file the Rust engine is tested with).
//   - RunExternalCudaWorker: one job on a one-shot worker
//     (docs/worker-protocol.md), stdin streamed, stdout bounded, stderr
//     kept and logged, the process group killed on timeout or cancel.
//   - PersistentWorker: many jobs in flight on one `cuda-worker --serve`
//     process (NDJSON with ids).
//   - DecodeEnvelope / DecodeBase64: the engine's envelope rules
//     (docs/envelope.md, checked against tests/envelope_cases.json).
//   - Client: the HTTP service (bin/cuda-service.mjs).
//
// Every failure is an *Error carrying one of the engine's stable codes
// (codes_gen.go, generated from docs/error-codes.json). Standard library
// only; builds with Go 1.19.
//
// Raw bytes travel as `payload_b64` in JSON: this package has no CBOR or
// MessagePack codec. A worker that answers with a binary frame (a bytes
// result) gives a Response whose Frame holds the undecoded body.
package cudaengine

//go:generate go run ../internal/gen -in ../../docs/error-codes.json -out codes_gen.go
