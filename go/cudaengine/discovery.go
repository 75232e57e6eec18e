package cudaengine

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Source says which discovery rule found the worker (docs/discovery.md).
type Source string

const (
	// SourceEnv: CUDA_WORKER_PATH (rule 1).
	SourceEnv Source = "env"
	// SourceRelative: a fixed name relative to the base directory (rule 2).
	SourceRelative Source = "relative"
	// SourcePath: cuda-worker on PATH (rule 3).
	SourcePath Source = "path"
)

// DiscoveryEnv is the part of the environment discovery reads. It is
// injected so that tests (and callers) never need to mutate the process
// environment.
type DiscoveryEnv struct {
	// CudaWorkerPath is CUDA_WORKER_PATH; empty counts as unset.
	CudaWorkerPath string
	// Path is PATH.
	Path string
	// Windows selects Windows naming: only .exe names, ';'-separated PATH.
	Windows bool
}

// ProcessDiscoveryEnv reads CUDA_WORKER_PATH and PATH of this process.
func ProcessDiscoveryEnv() DiscoveryEnv {
	return DiscoveryEnv{
		CudaWorkerPath: os.Getenv("CUDA_WORKER_PATH"),
		Path:           os.Getenv("PATH"),
		Windows:        runtime.GOOS == "windows",
	}
}

// DiscoveryOptions are the inputs of discovery.
type DiscoveryOptions struct {
	// BaseDir is the directory relative names resolve against; empty means
	// the process's current directory.
	BaseDir string
	// Env replaces the process environment when set.
	Env *DiscoveryEnv
}

// Rule 2, in order. On Windows only the .exe names are tried.
var relativeNames = [...]string{
	"cuda-worker/cuda-worker",
	"cuda-worker/cuda-worker.exe",
	"cuda-worker",
	"cuda-worker.exe",
	"bin/cuda-worker",
	"bin/cuda-worker.exe",
	"../cuda-worker/cuda-worker",
	"../cuda-worker/cuda-worker.exe",
}

// Candidate is a path discovery checks and the rule that produced it.
type Candidate struct {
	Path   string
	Source Source
}

func (o DiscoveryOptions) resolve() (string, DiscoveryEnv, error) {
	env := ProcessDiscoveryEnv()
	if o.Env != nil {
		env = *o.Env
	}
	base := o.BaseDir
	if base == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", env, wrapError(CodeWorkerNotFound, err, "discovery needs a base directory and the current directory is unreadable: %v", err)
		}
		base = wd
	}
	return base, env, nil
}

// joinPath joins like Rust's Path::join: an absolute b replaces a, and
// nothing is cleaned ("app/../x" stays as written, since lexical ".."
// removal disagrees with the kernel when "app" is a symlink).
func joinPath(a, b string) string {
	if a == "" || filepath.IsAbs(b) {
		return b
	}
	if os.IsPathSeparator(a[len(a)-1]) {
		return a + b
	}
	return a + string(os.PathSeparator) + b
}

func pathDirs(env DiscoveryEnv) []string {
	sep := ":"
	if env.Windows {
		sep = ";"
	}
	var out []string
	for _, d := range strings.Split(env.Path, sep) {
		// Empty entries are skipped: POSIX reads them as "cwd", which would
		// re-run rule 2 in another order.
		if d != "" {
			out = append(out, d)
		}
	}
	return out
}

func candidateList(base string, env DiscoveryEnv) []Candidate {
	if env.CudaWorkerPath != "" {
		return []Candidate{{joinPath(base, env.CudaWorkerPath), SourceEnv}}
	}
	var out []Candidate
	for _, n := range relativeNames {
		if env.Windows && !strings.HasSuffix(n, ".exe") {
			continue
		}
		out = append(out, Candidate{joinPath(base, n), SourceRelative})
	}
	name := "cuda-worker"
	if env.Windows {
		name = "cuda-worker.exe"
	}
	for _, d := range pathDirs(env) {
		// A relative PATH entry resolves against the base directory.
		out = append(out, Candidate{joinPath(joinPath(base, d), name), SourcePath})
	}
	return out
}

// DiscoveryCandidates lists every path discovery checks, in order (what the
// engine's health().cuda_path shows). With CUDA_WORKER_PATH set it is the
// only candidate.
func DiscoveryCandidates(opts DiscoveryOptions) ([]string, error) {
	base, env, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	cands := candidateList(base, env)
	out := make([]string, len(cands))
	for i, c := range cands {
		out[i] = c.Path
	}
	return out, nil
}

// IsExecutable reports whether path is, after following symlinks, a regular
// file with at least one execute bit (on Windows: a regular file).
func IsExecutable(path string) bool {
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	if runtime.GOOS == "windows" {
		return true
	}
	return st.Mode().Perm()&0o111 != 0
}

// FindCudaWorkerPath applies the discovery rules: the first executable
// candidate and the rule that found it. It fails with E_WORKER_NOT_FOUND
// naming CUDA_WORKER_PATH (which is never silently bypassed) or listing
// every place it looked.
func FindCudaWorkerPath(opts DiscoveryOptions) (string, Source, error) {
	base, env, err := opts.resolve()
	if err != nil {
		return "", "", err
	}
	cands := candidateList(base, env)
	if env.CudaWorkerPath != "" {
		p := cands[0].Path
		if IsExecutable(p) {
			return p, SourceEnv, nil
		}
		why := "does not exist"
		if _, err := os.Stat(p); err == nil {
			why = "is not an executable file"
		}
		return "", "", newError(CodeWorkerNotFound,
			"CUDA_WORKER_PATH=%s (%s) %s; CUDA_WORKER_PATH is the only candidate when set (unset it to search)",
			env.CudaWorkerPath, p, why)
	}
	looked := make([]string, len(cands))
	for i, c := range cands {
		if IsExecutable(c.Path) {
			return c.Path, c.Source, nil
		}
		looked[i] = c.Path
	}
	return "", "", newError(CodeWorkerNotFound,
		"no executable cuda-worker found (CUDA_WORKER_PATH unset); looked in: %s", strings.Join(looked, ", "))
}
