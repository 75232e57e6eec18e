package cudaengine

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"cuda-engine/go/internal/codegen"
)

// The codes are defined once in Rust and exported to docs/error-codes.json;
// codes_gen.go must be exactly what the generator makes of that file.
func TestGeneratedCodesMatchTheExportedTable(t *testing.T) {
	table, err := os.ReadFile("../../docs/error-codes.json")
	if err != nil {
		t.Fatalf("the exported error table: %v", err)
	}
	want, err := codegen.Render(table)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("codes_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("codes_gen.go differs from docs/error-codes.json: run `go generate ./...` in go/ and commit the result")
	}
	entries, _ := codegen.Parse(table)
	if len(entries) != len(codeTable) {
		t.Fatalf("%d codes in the JSON, %d in codes_gen.go", len(entries), len(codeTable))
	}
	for i, e := range entries {
		c := codeTable[i]
		if string(c.Code) != e.Code || c.HTTPStatus != e.HTTPStatus || c.Meaning != e.Meaning {
			t.Errorf("row %d: %+v vs %+v", i, c, e)
		}
		if info, ok := LookupCode(e.Code); !ok || info.HTTPStatus != e.HTTPStatus || Code(e.Code).HTTPStatus() != e.HTTPStatus {
			t.Errorf("LookupCode(%s) = %+v, %v", e.Code, info, ok)
		}
	}
}

func TestCodeNames(t *testing.T) {
	for code, name := range map[string]string{
		"E_WORKER_NOT_FOUND": "CodeWorkerNotFound", "E_BAD_JSON": "CodeBadJSON", "E_GPU_OOM": "CodeGPUOOM",
		"E_CUDA_UNAVAILABLE": "CodeCUDAUnavailable", "E_BAD_BASE64": "CodeBadBase64",
	} {
		if got := codegen.GoName(code); got != name {
			t.Errorf("%s: %s, want %s", code, got, name)
		}
	}
	if _, err := codegen.Parse([]byte(`[{"code":"bad","http_status":400,"meaning":"x"}]`)); err == nil {
		t.Error("a malformed code was accepted")
	}
	if _, ok := LookupCode("E_NOPE"); ok || Code("E_NOPE").HTTPStatus() != 500 {
		t.Error("an unknown code was found")
	}
}

func TestErrorsWrapTheirCause(t *testing.T) {
	cause := os.ErrNotExist
	err := error(wrapError(CodeWorkerNotFound, cause, "gone"))
	if CodeOf(err) != CodeWorkerNotFound || err.Error() != "E_WORKER_NOT_FOUND: gone" {
		t.Fatal(err)
	}
	if !errors.Is(err, cause) {
		t.Fatal("the cause is not reachable")
	}
	if CodeOf(nil) != "" || CodeOf(os.ErrClosed) != "" {
		t.Fatal("CodeOf of a plain error")
	}
}
