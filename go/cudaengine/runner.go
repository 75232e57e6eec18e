package cudaengine

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// Logger receives the worker's stderr, line by line, and warnings.
// *log.Logger satisfies it.
type Logger interface {
	Printf(format string, v ...interface{})
}

// RunOptions configure one one-shot job. Zero values take the engine's
// defaults (EngineOptions.worker in docs/worker-protocol.md).
type RunOptions struct {
	// Args for the worker (default none).
	Args []string
	// Env for the worker; nil inherits this process's environment.
	Env []string
	// Dir is the worker's working directory; empty inherits ours.
	Dir string
	// Timeout for the whole job (default 30 s). A context deadline that
	// comes first has the same effect.
	Timeout time.Duration
	// MaxOutputBytes bounds stdout (default 64 MiB): more is E_OUTPUT_LIMIT.
	MaxOutputBytes int
	// MaxStderrBytes is how much of the end of stderr is kept for the error
	// message (default 64 KiB).
	MaxStderrBytes int
	// WaitDelay is how long stdout may stay open after the worker exited,
	// held by a helper that left its process group (default 500 ms). The
	// rest of the group is killed at once when the worker exits.
	WaitDelay time.Duration
	// Logger receives every stderr line and the warnings; nil: none.
	Logger Logger
	// ReapOrphans makes this process a Linux child subreaper
	// (PR_SET_CHILD_SUBREAPER, process-wide) so that helpers a worker
	// abandons are reaped here. Turn it on where init does not reap
	// orphans (some containers); see docs/worker-protocol.md "Processes".
	ReapOrphans bool
}

const (
	defaultTimeout        = 30 * time.Second
	defaultMaxOutputBytes = 64 << 20
	defaultMaxStderrBytes = 64 << 10
	defaultWaitDelay      = 500 * time.Millisecond
	// How long to chase left-over group members after a job.
	cleanLimit = 300 * time.Millisecond
)

func (o RunOptions) withDefaults() RunOptions {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.MaxOutputBytes <= 0 {
		o.MaxOutputBytes = defaultMaxOutputBytes
	}
	if o.MaxStderrBytes <= 0 {
		o.MaxStderrBytes = defaultMaxStderrBytes
	}
	if o.WaitDelay <= 0 {
		o.WaitDelay = defaultWaitDelay
	}
	return o
}

// proc is a started worker: its pipes and its process group.
type proc struct {
	cmd     *exec.Cmd
	pgid    int
	stdin   *os.File
	stdout  *os.File
	stderr  *os.File
	closeIn sync.Once
	exited  chan struct{} // closed when the leader was reaped
	waitErr error
}

func (p *proc) closeStdin() { p.closeIn.Do(func() { p.stdin.Close() }) }

// startProc spawns path in its own process group with three pipes (no
// shell: the arguments reach the worker as given).
func startProc(path string, args, env []string, dir string) (*proc, error) {
	if st, err := os.Stat(path); err != nil && errors.Is(err, fs.ErrNotExist) {
		return nil, wrapError(CodeWorkerNotFound, err, "cannot start worker %s: the file does not exist", path)
	} else if err == nil && st.IsDir() {
		return nil, newError(CodeWorkerNotFound, "cannot start worker %s: it is a directory", path)
	}
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err1 := pipe()
	outR, outW, err2 := pipe()
	errR, errW, err3 := pipe()
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			closeAll()
			return nil, wrapError(CodeWorkerSpawn, err, "cannot start worker %s: %v", path, err)
		}
	}
	var cmd *exec.Cmd
	var err error
	for attempt := 0; ; attempt++ {
		cmd = exec.Command(path, args...)
		cmd.Env, cmd.Dir = env, dir
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		setProcessGroup(cmd)
		err = cmd.Start()
		if err == nil || !isTextBusy(err) || attempt >= 20 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The child's ends belong to the child now.
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, wrapError(CodeWorkerNotFound, err, "cannot start worker %s: the file does not exist", path)
		}
		return nil, wrapError(CodeWorkerSpawn, err, "cannot start worker %s: %v", path, err)
	}
	p := &proc{cmd: cmd, pgid: cmd.Process.Pid, stdin: inW, stdout: outR, stderr: errR, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// killAndReap kills the group, waits for the leader, closes our pipe ends
// (which ends any reader a helper outside the group still feeds), and
// chases the rest of the group.
func (p *proc) killAndReap(readers ...<-chan struct{}) {
	select {
	case <-p.exited:
		killGroup(nil, p.pgid) // the leader is reaped: sweep the group only
	default:
		killGroup(p.cmd.Process, p.pgid)
	}
	p.closeStdin()
	<-p.exited
	p.stdout.Close()
	p.stderr.Close()
	for _, r := range readers {
		<-r
	}
	cleanGroup(p.pgid, cleanLimit)
}

// cleanGroup kills and reaps what is left of the group after the leader
// was reaped, for at most limit. It reports whether the group is gone.
func cleanGroup(pgid int, limit time.Duration) bool {
	end := time.Now().Add(limit)
	pause := 200 * time.Microsecond
	for {
		killGroup(nil, pgid)
		reapGroupNoHang(pgid)
		if !groupExists(pgid) {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(pause)
		if pause *= 2; pause > 10*time.Millisecond {
			pause = 10 * time.Millisecond
		}
	}
}

// describeExit: "exited with code 3", "was killed by signal 9".
func describeExit(ps *os.ProcessState) string {
	if ps == nil {
		return "exited"
	}
	if sig, ok := exitSignal(ps); ok {
		return "was killed by signal " + strconv.Itoa(sig)
	}
	return "exited with code " + strconv.Itoa(ps.ExitCode())
}

// drainStderr copies a worker's stderr into tail and the logger until EOF.
func drainStderr(r io.Reader, tail *stderrTail, ll *lineLogger, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 16<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			tail.push(buf[:n])
			ll.write(buf[:n])
		}
		if err != nil {
			ll.flush()
			return
		}
	}
}

// RunExternalCudaWorker runs one job on a one-shot worker
// (docs/worker-protocol.md "One-shot mode"): it starts path in a new process
// group, streams req to its stdin and closes it, reads stdout (at most
// MaxOutputBytes) while draining stderr, and parses the one response.
//
// On timeout, context cancellation or too much output the whole process
// group is killed and reaped. When the worker exits, the rest of its group
// is killed at once and stdout is read for at most WaitDelay more, so a
// helper holding the pipe never makes the call hang.
//
// Errors are *Error with the engine's codes: E_WORKER_NOT_FOUND,
// E_WORKER_SPAWN, E_WORKER_TIMEOUT, E_CANCELLED, E_OUTPUT_LIMIT,
// E_WORKER_EXIT (with the exit code or signal and the stderr tail),
// E_WORKER_PROTOCOL, or the code the worker reported in `ok: false`.
//
// req is typically Request.Reader() or StreamBytesRequest(...). The call
// returns without waiting for a req that blocks; a req that is an
// io.Closer is not closed.
func RunExternalCudaWorker(ctx context.Context, path string, req io.Reader, opts RunOptions) (*Response, error) {
	o := opts.withDefaults()
	if s, ok := req.(interface{ abandon() }); ok {
		defer s.abandon()
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx, CodeWorkerTimeout, "worker "+path)
	}
	if o.ReapOrphans {
		enableSubreaper(o.Logger)
	}
	started := time.Now()
	p, err := startProc(path, o.Args, o.Env, o.Dir)
	if err != nil {
		return nil, err
	}
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()

	// stdin: copied by its own goroutine; a worker that stops reading
	// makes the write fail (EPIPE) and its exit decides the outcome.
	go func() {
		if req != nil {
			_, _ = io.Copy(p.stdin, req)
		}
		p.closeStdin()
	}()

	// stdout, bounded: one byte over the limit is enough to know.
	var out []byte
	over := false
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		buf := make([]byte, 64<<10)
		for {
			room := o.MaxOutputBytes + 1 - len(out)
			if room > len(buf) {
				room = len(buf)
			}
			n, err := p.stdout.Read(buf[:room])
			out = append(out, buf[:n]...)
			if len(out) > o.MaxOutputBytes {
				over = true
				return
			}
			if err != nil {
				return
			}
		}
	}()

	tail := newStderrTail(o.MaxStderrBytes)
	ll := &lineLogger{log: o.Logger, prefix: "cuda-worker[" + strconv.Itoa(p.pgid) + "] stderr: "}
	errDone := make(chan struct{})
	go drainStderr(p.stderr, tail, ll, errDone)

	fail := func(e *Error) (*Response, error) {
		if o.Logger != nil {
			o.Logger.Printf("cuda-engine: %v", e)
		}
		return nil, e
	}
	abort := func() { p.killAndReap(outDone, errDone) }

	var grace <-chan time.Time
	exited := p.exited
	outOpen, errOpen := outDone, errDone
	for exited != nil || outOpen != nil || errOpen != nil {
		select {
		case <-ctx.Done():
			abort()
			return fail(contextError(ctx, CodeWorkerTimeout, "worker "+path+" (its process group was killed)"))
		case <-deadline.C:
			abort()
			return fail(newError(CodeWorkerTimeout, "worker %s did not finish within %d ms; its process group was killed%s",
				path, o.Timeout.Milliseconds(), tail.suffix()))
		case <-outOpen:
			outOpen = nil
			if over {
				abort()
				return fail(newError(CodeOutputLimit, "worker %s wrote more than %d bytes to stdout (maxOutputBytes); killed",
					path, o.MaxOutputBytes))
			}
		case <-errOpen:
			errOpen = nil
		case <-exited:
			exited = nil
			// The leader is gone: anything left in its group is a stray that
			// could hold our pipes open. Kill it now.
			killGroup(nil, p.pgid)
			grace = time.After(o.WaitDelay)
		case <-grace:
			// A process outside the group (setsid) holds the pipes: stop
			// reading; what was read decides.
			p.stdout.Close()
			p.stderr.Close()
			<-outDone
			<-errDone
			outOpen, errOpen = nil, nil
			if over {
				cleanGroup(p.pgid, cleanLimit)
				return fail(newError(CodeOutputLimit, "worker %s wrote more than %d bytes to stdout (maxOutputBytes); killed",
					path, o.MaxOutputBytes))
			}
		}
	}
	p.closeStdin()
	p.stdout.Close()
	p.stderr.Close()
	cleanGroup(p.pgid, cleanLimit)

	ps := p.cmd.ProcessState
	if p.waitErr != nil && ps == nil {
		return fail(wrapError(CodeWorkerExit, p.waitErr, "waiting for worker %s: %v", path, p.waitErr))
	}
	if !ps.Success() {
		return fail(newError(CodeWorkerExit, "worker %s %s after %d ms%s",
			path, describeExit(ps), time.Since(started).Milliseconds(), tail.suffix()))
	}
	resp, jobErr, why := parseOneshotOutput(out)
	if why != "" {
		return fail(newError(CodeWorkerProtocol, "worker %s %s%s", path, why, tail.suffix()))
	}
	if jobErr != nil {
		return nil, jobErr
	}
	resp.Stderr = tail.text()
	return resp, nil
}
