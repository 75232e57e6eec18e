//go:build linux

package cudaengine

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireOrSkip fails in CI mode (CI_REQUIRE_WORKER=1) and skips otherwise,
// printing SKIPPED with the reason.
func requireOrSkip(t *testing.T, format string, args ...interface{}) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if os.Getenv("CI_REQUIRE_WORKER") == "1" {
		t.Fatalf("CI_REQUIRE_WORKER=1 and %s", why)
	}
	fmt.Printf("SKIPPED %s: %s\n", t.Name(), why)
	t.Skip("SKIPPED: " + why)
}

// cudaWorkerBin is the built worker: CUDA_WORKER_BIN, else
// target/release/cuda-worker of this repository.
func cudaWorkerBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("CUDA_WORKER_BIN")
	if p == "" {
		abs, err := filepath.Abs("../../target/release/cuda-worker")
		if err != nil {
			t.Fatal(err)
		}
		p = abs
	}
	if !IsExecutable(p) {
		requireOrSkip(t, "no cuda-worker binary at %s (build it with `cargo build --release -p cuda-worker`)", p)
	}
	return p
}

// script writes an executable #!/bin/sh script.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// readPid waits briefly for a pid a script wrote.
func readPid(t *testing.T, path string) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		if b, err := os.ReadFile(path); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return n
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no pid in %s", path)
	return 0
}

// groupMembers lists processes (zombies included) of process group pgid,
// read from /proc, as "pid:state".
func groupMembers(pgid int) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 > len(stat) {
			continue
		}
		f := strings.Fields(string(stat[i+2:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) {
			out = append(out, fmt.Sprintf("%d:%s", pid, f[0]))
		}
	}
	return out
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

func fdCount() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
