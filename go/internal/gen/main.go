// Command gen writes cudaengine/codes_gen.go from docs/error-codes.json.
// It runs through `go generate ./...` (see cudaengine/doc.go):
//
//	go run ../internal/gen -in ../../docs/error-codes.json -out codes_gen.go
package main

import (
	"flag"
	"fmt"
	"os"

	"cuda-engine/go/internal/codegen"
)

func main() {
	in := flag.String("in", "../../docs/error-codes.json", "the exported error table")
	out := flag.String("out", "codes_gen.go", "the Go file to write")
	flag.Parse()
	table, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	src, err := codegen.Render(table)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
