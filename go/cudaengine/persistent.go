package cudaengine

import (
	"bufio"
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// PersistentOptions configure a PersistentWorker. Zero values take the
// engine's defaults.
type PersistentOptions struct {
	// Args for the worker (default ["--serve"]).
	Args []string
	// Env and Dir as in RunOptions.
	Env []string
	Dir string
	// Timeout per job (default 30 s); a context deadline may come first.
	Timeout time.Duration
	// MaxOutputBytes bounds one response line (default 64 MiB).
	MaxOutputBytes int
	// MaxStderrBytes of stderr are kept per process (default 64 KiB).
	MaxStderrBytes int
	// Logger receives stderr lines and warnings; nil: none.
	Logger Logger
	// ReapOrphans as in RunOptions.
	ReapOrphans bool
}

// PersistentWorker runs many jobs in flight on one long-lived
// `cuda-worker --serve` process (docs/worker-protocol.md "Persistent
// mode"): NDJSON requests with ids, responses matched by id in any order,
// writes batched (one flush per burst). A process that dies fails its jobs
// in flight at once and is replaced on the next call, after a back-off of
// 50 ms doubling to 10 s for deaths in a row (none after a process that
// answered at least one job).
//
// Payloads are JSON: this client has no CBOR/MessagePack codec, so it
// cannot read binary frames. A reply in a frame (a bytes result) is
// E_WORKER_PROTOCOL and restarts the process; send byte payloads through
// RunExternalCudaWorker.
type PersistentWorker struct {
	path string
	o    PersistentOptions

	mu        sync.Mutex
	cur       *pproc
	closed    bool
	nextID    uint64
	deaths    int
	restartAt time.Time
	restarts  int
	started   bool
}

// WorkerHealth is a snapshot of a PersistentWorker.
type WorkerHealth struct {
	Running  bool
	PID      int
	InFlight int
	// Restarts counts processes started after the first.
	Restarts int
}

// NewPersistentWorker prepares a worker for path; the process starts on
// the first call (or call Start).
func NewPersistentWorker(path string, opts PersistentOptions) *PersistentWorker {
	if opts.Args == nil {
		opts.Args = []string{"--serve"}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.MaxOutputBytes <= 0 {
		opts.MaxOutputBytes = defaultMaxOutputBytes
	}
	if opts.MaxStderrBytes <= 0 {
		opts.MaxStderrBytes = defaultMaxStderrBytes
	}
	return &PersistentWorker{path: path, o: opts}
}

// Start starts the process now (a missing binary fails here, not at the
// first call).
func (w *PersistentWorker) Start(ctx context.Context) error {
	_, _, err := w.acquire(ctx)
	return err
}

// Health reports the current process.
func (w *PersistentWorker) Health() WorkerHealth {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := WorkerHealth{Restarts: w.restarts}
	if pp := w.cur; pp != nil {
		pp.mu.Lock()
		h.Running, h.PID, h.InFlight = !pp.dead, pp.p.pgid, len(pp.pending)
		pp.mu.Unlock()
	}
	return h
}

func backoff(deathsInARow int) time.Duration {
	if deathsInARow <= 0 {
		return 0
	}
	exp := deathsInARow - 1
	if exp > 8 {
		exp = 8
	}
	d := 50 * time.Millisecond << uint(exp)
	if d > 10*time.Second {
		d = 10 * time.Second
	}
	return d
}

// acquire returns the live process (starting one if needed) and a new id.
func (w *PersistentWorker) acquire(ctx context.Context) (*pproc, uint64, error) {
	for {
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return nil, 0, newError(CodeClosed, "the persistent worker %s is closed", w.path)
		}
		if pp := w.cur; pp != nil && !pp.isDead() {
			w.nextID++
			id := w.nextID
			w.mu.Unlock()
			return pp, id, nil
		}
		if pp := w.cur; pp != nil {
			select {
			case <-pp.gone:
			default:
				// Dying: let the waiter deliver and fail its jobs first.
				w.mu.Unlock()
				<-pp.gone
				continue
			}
			// Count the death once, when the process is replaced.
			if atomic.LoadInt64(&pp.answered) > 0 {
				w.deaths = 0
			} else {
				w.deaths++
			}
			w.restartAt = pp.diedAt.Add(backoff(w.deaths))
			w.cur = nil
		}
		if wait := time.Until(w.restartAt); wait > 0 {
			w.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, 0, contextError(ctx, CodeWorkerTimeout, "waiting to restart worker "+w.path)
			case <-t.C:
			}
			continue
		}
		if w.o.ReapOrphans {
			enableSubreaper(w.o.Logger)
		}
		p, err := startProc(w.path, w.o.Args, w.o.Env, w.o.Dir)
		if err != nil {
			w.mu.Unlock()
			return nil, 0, err
		}
		if w.started {
			w.restarts++
		}
		w.started = true
		pp := newPproc(w, p)
		w.cur = pp
		w.mu.Unlock()
	}
}

// Call runs one job and waits for its answer, the job timeout, or ctx.
// On a timeout or cancellation the worker is sent {"id":N,"cancel":true};
// if it wrote nothing at all since the job was sent it is hung, and its
// process group is killed.
func (w *PersistentWorker) Call(ctx context.Context, req Request) (*Response, error) {
	if req.Bytes != nil {
		return nil, newError(CodeInvalidArg, "the persistent client sends JSON payloads only (it cannot read the binary frames byte results come back in); send bytes with RunExternalCudaWorker")
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx, CodeWorkerTimeout, "worker "+w.path)
	}
	pp, id, err := w.acquire(ctx)
	if err != nil {
		return nil, err
	}
	line, err := req.MarshalLine(id)
	if err != nil {
		return nil, err
	}
	ch := make(chan outcome, 1)
	sent := time.Now().UnixNano()
	if !pp.submit(id, line, ch) {
		return nil, pp.deathError()
	}
	timer := time.NewTimer(w.o.Timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		pp.cancel(id)
		return nil, contextError(ctx, CodeWorkerTimeout, "worker "+w.path+" job "+strconv.FormatUint(id, 10)+" (cancel sent)")
	case <-timer.C:
		pp.cancel(id)
		const msg = "worker %s did not answer job %d within %d ms; cancel sent"
		if atomic.LoadInt64(&pp.lastOutput) < sent {
			e := newError(CodeWorkerTimeout, msg+"; it wrote nothing since the job was sent, so its process group was killed as hung%s",
				w.path, id, w.o.Timeout.Milliseconds(), pp.tail.suffix())
			pp.kill(e)
			return nil, e
		}
		return nil, newError(CodeWorkerTimeout, msg, w.path, id, w.o.Timeout.Milliseconds())
	}
}

// Close closes the worker's stdin (it exits once the jobs in flight have
// answered), waits up to 2 s, then kills the process group. It returns when
// the process is reaped.
func (w *PersistentWorker) Close() error {
	w.mu.Lock()
	w.closed = true
	pp := w.cur
	w.mu.Unlock()
	if pp == nil {
		return nil
	}
	pp.closeInput()
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-pp.gone:
	case <-t.C:
		pp.kill(newError(CodeClosed, "the persistent worker %s was closed with jobs in flight", w.path))
		<-pp.gone
	}
	return nil
}

type outcome struct {
	resp *Response
	err  error
}

// pproc is one persistent process and its goroutines: writer (batched
// flushes), reader (matches responses by id), stderr drain, and waiter
// (after the exit: lets the reader finish, fails what is left, reaps).
type pproc struct {
	w    *PersistentWorker
	p    *proc
	tail *stderrTail

	mu       sync.Mutex
	pending  map[uint64]chan outcome
	queue    [][]byte
	closing  bool
	dead     bool
	deadErr  *Error
	killWhy  *Error
	diedAt   time.Time
	wake     chan struct{}
	gone     chan struct{}
	readDone chan struct{}
	errDone  chan struct{}

	lastOutput int64 // UnixNano of the last message read
	answered   int64
}

func newPproc(w *PersistentWorker, p *proc) *pproc {
	pp := &pproc{
		w: w, p: p, tail: newStderrTail(w.o.MaxStderrBytes),
		pending: map[uint64]chan outcome{}, wake: make(chan struct{}, 1), gone: make(chan struct{}),
		readDone: make(chan struct{}), errDone: make(chan struct{}),
	}
	ll := &lineLogger{log: w.o.Logger, prefix: "cuda-worker[" + strconv.Itoa(p.pgid) + "] stderr: "}
	go drainStderr(p.stderr, pp.tail, ll, pp.errDone)
	go pp.writer()
	go pp.reader()
	go pp.waiter()
	return pp
}

// isDead: exited, killed, or closing (a job sent now would not be read).
func (pp *pproc) isDead() bool {
	select {
	case <-pp.p.exited:
		return true
	default:
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.dead || pp.closing || pp.killWhy != nil
}

func (pp *pproc) deathError() error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.deadErr != nil {
		return pp.deadErr
	}
	if pp.killWhy != nil {
		return pp.killWhy
	}
	return newError(CodeWorkerExit, "worker %s is shutting down", pp.w.path)
}

func (pp *pproc) enqueue(m []byte) {
	pp.queue = append(pp.queue, m)
	select {
	case pp.wake <- struct{}{}:
	default:
	}
}

func (pp *pproc) submit(id uint64, line []byte, ch chan outcome) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.dead || pp.closing || pp.killWhy != nil {
		return false
	}
	pp.pending[id] = ch
	pp.enqueue(line)
	return true
}

func (pp *pproc) cancel(id uint64) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if _, ok := pp.pending[id]; !ok {
		return
	}
	delete(pp.pending, id)
	if !pp.dead && !pp.closing {
		pp.enqueue([]byte(`{"id":` + strconv.FormatUint(id, 10) + `,"cancel":true}` + "\n"))
	}
}

func (pp *pproc) closeInput() {
	pp.mu.Lock()
	pp.closing = true
	pp.mu.Unlock()
	select {
	case pp.wake <- struct{}{}:
	default:
	}
}

// kill records why (reported to every job in flight) and kills the group;
// the waiter does the rest.
func (pp *pproc) kill(why *Error) {
	pp.mu.Lock()
	if pp.killWhy == nil && !pp.dead {
		pp.killWhy = why
		if l := pp.w.o.Logger; l != nil {
			l.Printf("cuda-engine: killing worker pid %d: %v", pp.p.pgid, why)
		}
	}
	pp.mu.Unlock()
	select {
	case <-pp.p.exited:
		killGroup(nil, pp.p.pgid)
	default:
		killGroup(pp.p.cmd.Process, pp.p.pgid)
	}
}

func (pp *pproc) writer() {
	bw := bufio.NewWriterSize(pp.p.stdin, 64<<10)
	broken := false
	for range pp.wake {
		pp.mu.Lock()
		batch, closing := pp.queue, pp.closing || pp.dead
		pp.queue = nil
		pp.mu.Unlock()
		for _, m := range batch {
			if !broken {
				if _, err := bw.Write(m); err != nil {
					broken = true
				}
			}
		}
		if !broken && bw.Flush() != nil {
			broken = true
		}
		if closing {
			pp.p.closeStdin()
			return
		}
	}
}

var errLineTooLong = errors.New("line over the limit")

func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max+1 {
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		return line, err
	}
}

func (pp *pproc) reader() {
	defer close(pp.readDone)
	path, max := pp.w.path, pp.w.o.MaxOutputBytes
	br := bufio.NewReaderSize(pp.p.stdout, 64<<10)
	for {
		c, err := br.ReadByte()
		if err != nil {
			return
		}
		if isASCIISpace(c) {
			continue
		}
		atomic.StoreInt64(&pp.lastOutput, time.Now().UnixNano())
		if c == FrameTag {
			var h [FrameHeaderLen - 1]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				pp.kill(newError(CodeWorkerProtocol, "worker %s wrote a truncated frame header%s", path, pp.tail.suffix()))
				return
			}
			n := int64(h[1])<<24 | int64(h[2])<<16 | int64(h[3])<<8 | int64(h[4])
			if n > int64(max) {
				pp.kill(newError(CodeOutputLimit, "worker %s wrote a %d-byte frame, over %d bytes (maxOutputBytes); killed", path, n, max))
				return
			}
			pp.kill(newError(CodeWorkerProtocol, "worker %s answered with a binary frame (a bytes result), which this JSON-only client cannot read; killed%s", path, pp.tail.suffix()))
			return
		}
		_ = br.UnreadByte()
		line, err := readLine(br, max)
		if err == errLineTooLong {
			pp.kill(newError(CodeOutputLimit, "worker %s wrote a line over %d bytes (maxOutputBytes); killed", path, max))
			return
		}
		if len(trimASCIISpace(line)) == 0 {
			return
		}
		id, hasID, resp, jobErr, why := parseJSONResponse(line)
		if why == "" && !hasID {
			why = "no `id` (persistent mode)"
		}
		if why != "" {
			pp.kill(newError(CodeWorkerProtocol, "worker %s wrote an invalid response: %s: %s%s", path, why, snippet(line), pp.tail.suffix()))
			return
		}
		atomic.AddInt64(&pp.answered, 1)
		pp.mu.Lock()
		ch, ok := pp.pending[id]
		delete(pp.pending, id)
		pp.mu.Unlock()
		if !ok {
			continue // a job that timed out or was cancelled
		}
		if jobErr != nil {
			ch <- outcome{err: jobErr}
		} else {
			resp.Stderr = pp.tail.text()
			ch <- outcome{resp: resp}
		}
		if err != nil {
			return
		}
	}
}

func (pp *pproc) waiter() {
	<-pp.p.exited
	// Anything left in the group could hold stdout open: kill it, then let
	// the reader deliver what the worker wrote before it exited.
	killGroup(nil, pp.p.pgid)
	grace := time.NewTimer(defaultWaitDelay)
	select {
	case <-pp.readDone:
	case <-grace.C:
	}
	grace.Stop()
	pp.p.stdout.Close()
	pp.p.stderr.Close()
	<-pp.readDone
	<-pp.errDone

	e := (*Error)(nil)
	pp.mu.Lock()
	if pp.killWhy != nil {
		e = pp.killWhy
	} else {
		e = newError(CodeWorkerExit, "worker %s (pid %d) %s%s", pp.w.path, pp.p.pgid, describeExit(pp.p.cmd.ProcessState), pp.tail.suffix())
	}
	pp.dead, pp.deadErr, pp.diedAt = true, e, time.Now()
	pending := pp.pending
	pp.pending = map[uint64]chan outcome{}
	pp.mu.Unlock()
	if l := pp.w.o.Logger; l != nil && (len(pending) > 0 || pp.killWhy != nil) {
		l.Printf("cuda-engine: %v", e)
	}
	for _, ch := range pending {
		ch <- outcome{err: e}
	}
	select {
	case pp.wake <- struct{}{}: // let the writer see `dead` and exit
	default:
	}
	pp.p.closeStdin()
	cleanGroup(pp.p.pgid, cleanLimit)
	close(pp.gone)
}
