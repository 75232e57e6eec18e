package cudaengine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The shared discovery cases: the file the Rust engine's
// crates/core/tests/discovery_cases.rs reads, run as docs/discovery.md says.
const discoveryCasesFile = "../../tests/discovery_cases.json"

type discoveryCase struct {
	Name    string `json:"name"`
	BaseDir string `json:"base_dir"`
	Windows bool   `json:"windows"`
	Env     struct {
		CudaWorkerPath *string  `json:"CUDA_WORKER_PATH"`
		Path           []string `json:"PATH"`
	} `json:"env"`
	Files []struct {
		Path string `json:"path"`
		Mode string `json:"mode"`
	} `json:"files"`
	Candidates []string `json:"candidates"`
	Expect     struct {
		Path            string   `json:"path"`
		Source          Source   `json:"source"`
		Error           Code     `json:"error"`
		MessageContains []string `json:"message_contains"`
	} `json:"expect"`
}

// bundledInput reports a non-empty "bundled" input in a case: the npm
// platform package's worker, an input that only the Node binding has and
// that other languages pass empty (docs/discovery.md).
func bundledInput(raw map[string]json.RawMessage) string {
	check := func(m map[string]json.RawMessage) string {
		for k, v := range m {
			if strings.Contains(strings.ToLower(k), "bundled") {
				s := strings.TrimSpace(string(v))
				if s != "null" && s != `""` && s != "[]" && s != "false" && s != "{}" {
					return k
				}
			}
		}
		return ""
	}
	if k := check(raw); k != "" {
		return k
	}
	var env map[string]json.RawMessage
	if json.Unmarshal(raw["env"], &env) == nil {
		return check(env)
	}
	return ""
}

func TestSharedDiscoveryCases(t *testing.T) {
	text, err := os.ReadFile(discoveryCasesFile)
	if err != nil {
		t.Fatalf("the shared cases: %v", err)
	}
	var doc struct {
		Cases []json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(text, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Cases) < 10 {
		t.Fatalf("the case file lost cases: %d", len(doc.Cases))
	}
	ran := 0
	for _, raw := range doc.Cases {
		var c discoveryCase
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		var fields map[string]json.RawMessage
		_ = json.Unmarshal(raw, &fields)
		if k := bundledInput(fields); k != "" || c.Expect.Source == "bundled" {
			t.Logf("%s: not run: it sets the bundled-worker input %q, which Go passes empty", c.Name, k)
			continue
		}
		ran++
		t.Run(c.Name, func(t *testing.T) { runDiscoveryCase(t, c) })
	}
	t.Logf("%d of %d shared discovery cases run", ran, len(doc.Cases))
}

func runDiscoveryCase(t *testing.T, c discoveryCase) {
	root := t.TempDir()
	subst := func(s string) string { return strings.ReplaceAll(s, "{root}", root) }
	norm := func(s string) string { return strings.ReplaceAll(s, `\`, "/") }
	for _, f := range c.Files {
		p := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mode, err := strconv.ParseUint(f.Mode, 8, 32)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	base := joinPath(root, c.BaseDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	sep := ":"
	if c.Windows {
		sep = ";"
	}
	var dirs []string
	for _, d := range c.Env.Path {
		dirs = append(dirs, subst(d))
	}
	env := DiscoveryEnv{Path: strings.Join(dirs, sep), Windows: c.Windows}
	if c.Env.CudaWorkerPath != nil {
		env.CudaWorkerPath = subst(*c.Env.CudaWorkerPath)
	}
	opts := DiscoveryOptions{BaseDir: base, Env: &env}

	if c.Candidates != nil {
		got, err := DiscoveryCandidates(opts)
		if err != nil {
			t.Fatal(err)
		}
		var want, gotN []string
		for _, w := range c.Candidates {
			want = append(want, subst(w))
		}
		for _, g := range got {
			gotN = append(gotN, norm(g))
		}
		if !reflect.DeepEqual(gotN, want) {
			t.Errorf("candidates:\n got  %q\n want %q", gotN, want)
		}
	}
	path, source, err := FindCudaWorkerPath(opts)
	switch {
	case c.Expect.Error == "" && err != nil:
		t.Errorf("expected a worker, got %v", err)
	case c.Expect.Error == "":
		if want := subst(c.Expect.Path); norm(path) != want || source != c.Expect.Source {
			t.Errorf("got %s %s, want %s %s", path, source, want, c.Expect.Source)
		}
	case err == nil:
		t.Errorf("expected %s, found %s (%s)", c.Expect.Error, path, source)
	default:
		if CodeOf(err) != c.Expect.Error {
			t.Errorf("wrong code: %v", err)
		}
		for _, part := range c.Expect.MessageContains {
			if part = subst(part); !strings.Contains(err.Error(), part) {
				t.Errorf("message %q lacks %q", err.Error(), part)
			}
		}
	}
}

func TestDiscoveryDefaultsToTheProcess(t *testing.T) {
	env := ProcessDiscoveryEnv()
	if env.Path != os.Getenv("PATH") || env.CudaWorkerPath != os.Getenv("CUDA_WORKER_PATH") {
		t.Fatalf("ProcessDiscoveryEnv does not read the environment: %+v", env)
	}
	wd, _ := os.Getwd()
	got, err := DiscoveryCandidates(DiscoveryOptions{Env: &DiscoveryEnv{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 || got[0] != joinPath(wd, "cuda-worker/cuda-worker") {
		t.Fatalf("an empty BaseDir must mean the current directory: %q", got)
	}
}

func TestJoinPathKeepsDotDot(t *testing.T) {
	if got := joinPath("/srv/app", "../cuda-worker/cuda-worker"); got != "/srv/app/../cuda-worker/cuda-worker" {
		t.Fatal(got)
	}
	if got := joinPath("/srv/app/", "x"); got != "/srv/app/x" {
		t.Fatal(got)
	}
	if got := joinPath("/srv/app", "/abs/w"); got != "/abs/w" {
		t.Fatal(got)
	}
}
