//go:build linux

package cudaengine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const misbehaviourTimeout = 700 * time.Millisecond

func echoRequest(t *testing.T, payload string) *bytes.Reader {
	t.Helper()
	line, err := Request{Type: "echo", JobID: "t1", Payload: json.RawMessage(payload)}.MarshalLine(0)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(line)
}

func testOptions(timeout time.Duration) RunOptions {
	// Helpers that workers abandon must be reapable: the init of some
	// containers (this one included) does not reap orphans.
	return RunOptions{Timeout: timeout, MaxOutputBytes: 1 << 20, MaxStderrBytes: 4096, ReapOrphans: true}
}

// misbehave runs body as a one-shot worker (it records its pid in $D/pid)
// and checks the time and that its process group is gone.
func misbehave(t *testing.T, body string, opts RunOptions) (*Response, error, time.Duration) {
	t.Helper()
	dir := t.TempDir()
	path := script(t, dir, "w.sh", fmt.Sprintf("D='%s'\necho $$ > \"$D/pid\"\n%s", dir, body))
	fds := fdCount()
	start := time.Now()
	resp, err := RunExternalCudaWorker(context.Background(), path, echoRequest(t, `{"x":1}`), opts)
	took := time.Since(start)
	if took > opts.Timeout+time.Second {
		t.Errorf("took %v (timeout %v): %v", took, opts.Timeout, err)
	}
	pgid := readPid(t, filepath.Join(dir, "pid"))
	if left := groupMembers(pgid); len(left) > 0 {
		t.Errorf("process group %d still has %v after %v", pgid, left, err)
	}
	if n := fdCount(); n > fds {
		t.Errorf("%d file descriptors before the job, %d after", fds, n)
	}
	return resp, err, took
}

func wantCode(t *testing.T, err error, code Code, contains ...string) {
	t.Helper()
	if CodeOf(err) != code {
		t.Fatalf("got %v, want %s", err, code)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("message %q lacks %q", err.Error(), c)
		}
	}
}

func TestRunnerHangTimesOutAndKillsTheGroup(t *testing.T) {
	// sleep runs as a child of sh: both must die.
	_, err, took := misbehave(t, "sleep 1000\necho never", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeWorkerTimeout, "did not finish within 700 ms", "process group was killed")
	if took < misbehaviourTimeout {
		t.Errorf("returned after %v, before the timeout", took)
	}
}

func TestRunnerExit3ReportsTheStderrTail(t *testing.T) {
	var logged []string
	var mu sync.Mutex
	opts := testOptions(misbehaviourTimeout)
	opts.Logger = loggerFunc(func(format string, v ...interface{}) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(format, v...))
		mu.Unlock()
	})
	_, err, _ := misbehave(t, "cat >/dev/null\necho 'fatal: the GPU caught fire' >&2\nexit 3", opts)
	wantCode(t, err, CodeWorkerExit, "exited with code 3", "the GPU caught fire")
	mu.Lock()
	defer mu.Unlock()
	if all := strings.Join(logged, "\n"); !strings.Contains(all, "stderr: fatal: the GPU caught fire") {
		t.Errorf("stderr was not logged line by line: %q", all)
	}
}

type loggerFunc func(format string, v ...interface{})

func (f loggerFunc) Printf(format string, v ...interface{}) { f(format, v...) }

func TestRunnerKilledBySignal(t *testing.T) {
	_, err, _ := misbehave(t, "cat >/dev/null\nkill -9 $$", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeWorkerExit, "was killed by signal 9")
}

func TestRunner100MBOfStdoutIsCutAtTheLimit(t *testing.T) {
	_, err, took := misbehave(t, "head -c 100000000 /dev/zero", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeOutputLimit, "more than 1048576 bytes")
	if took >= misbehaviourTimeout {
		t.Errorf("the limit must stop it early, took %v", took)
	}
}

func TestRunnerTenMBOfStderrAndNoStdout(t *testing.T) {
	_, err, _ := misbehave(t, "head -c 10000000 /dev/zero | tr '\\0' e >&2", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeWorkerProtocol, "without writing a response", "9995904 earlier bytes dropped")
	if len(err.Error()) > 4096+1024 {
		t.Errorf("the message is %d bytes: the tail is not bounded", len(err.Error()))
	}
}

func TestRunnerGarbageIsAProtocolError(t *testing.T) {
	_, err, _ := misbehave(t, "cat >/dev/null\necho 'this is { not json'", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeWorkerProtocol, "this is { not json")
}

func TestRunnerGrandchildHoldingStdoutDoesNotHang(t *testing.T) {
	// The worker answers, leaves a helper holding stdout, exits 0: the job
	// ends at once with the answer and the helper dies.
	dir := t.TempDir()
	path := script(t, dir, "w.sh", fmt.Sprintf("D='%s'\necho $$ > \"$D/pid\"\ncat >/dev/null\n"+
		"echo '{\"ok\":true,\"result\":\"done\"}'\nsleep 1000 &\necho $! > \"$D/gpid\"\nexit 0", dir))
	start := time.Now()
	resp, err := RunExternalCudaWorker(context.Background(), path, echoRequest(t, "1"), testOptions(misbehaviourTimeout))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Result) != `"done"` || resp.Encoding != "json" {
		t.Fatalf("result %s %s", resp.Result, resp.Encoding)
	}
	if took := time.Since(start); took >= misbehaviourTimeout {
		t.Errorf("waited for the helper: %v", took)
	}
	pgid, gpid := readPid(t, filepath.Join(dir, "pid")), readPid(t, filepath.Join(dir, "gpid"))
	if left := groupMembers(pgid); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
	if processAlive(gpid) {
		t.Errorf("the helper %d survived", gpid)
	}
}

func TestRunnerGrandchildAndNoAnswerIsAProtocolError(t *testing.T) {
	_, err, took := misbehave(t, "cat >/dev/null\n(sleep 1000) &\nexit 0", testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeWorkerProtocol)
	if took >= misbehaviourTimeout {
		t.Errorf("took %v", took)
	}
}

func TestRunnerHelperOutsideTheGroupIsCutAfterWaitDelay(t *testing.T) {
	// setsid escapes the process group: nothing can kill it through the
	// group, so stdout is read for WaitDelay after the exit, then dropped.
	dir := t.TempDir()
	path := script(t, dir, "w.sh", fmt.Sprintf("D='%s'\ncat >/dev/null\necho '{\"ok\":true,\"result\":7}'\n"+
		"setsid sh -c 'echo $$ > \"%s/spid\"; exec sleep 1000' &\nsleep 0.1\nexit 0", dir, dir))
	opts := testOptions(5 * time.Second)
	opts.WaitDelay = 300 * time.Millisecond
	start := time.Now()
	resp, err := RunExternalCudaWorker(context.Background(), path, echoRequest(t, "1"), opts)
	took := time.Since(start)
	spid := readPid(t, filepath.Join(dir, "spid"))
	defer func() {
		if p, err := os.FindProcess(spid); err == nil {
			_ = p.Kill()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Result) != "7" {
		t.Fatalf("result %s", resp.Result)
	}
	if took > opts.WaitDelay+time.Second {
		t.Errorf("took %v with a WaitDelay of %v", took, opts.WaitDelay)
	}
}

func TestRunnerContextCancelKillsTheGroup(t *testing.T) {
	dir := t.TempDir()
	path := script(t, dir, "w.sh", fmt.Sprintf("echo $$ > '%s/pid'\nsleep 1000", dir))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := RunExternalCudaWorker(ctx, path, echoRequest(t, "1"), testOptions(30*time.Second))
	wantCode(t, err, CodeCancelled)
	if time.Since(start) > time.Second {
		t.Errorf("took %v", time.Since(start))
	}
	if left := groupMembers(readPid(t, filepath.Join(dir, "pid"))); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

func TestRunnerContextDeadlineIsATimeout(t *testing.T) {
	dir := t.TempDir()
	path := script(t, dir, "w.sh", fmt.Sprintf("echo $$ > '%s/pid'\nsleep 1000", dir))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := RunExternalCudaWorker(ctx, path, echoRequest(t, "1"), testOptions(30*time.Second))
	wantCode(t, err, CodeWorkerTimeout, "deadline")
	if !strings.Contains(fmt.Sprint(err), "deadline") || CodeOf(err) != CodeWorkerTimeout {
		t.Fatal(err)
	}
	if left := groupMembers(readPid(t, filepath.Join(dir, "pid"))); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

func TestRunnerWorkerReportedCodes(t *testing.T) {
	dir := t.TempDir()
	known := script(t, dir, "known.sh", `cat >/dev/null
echo '{"ok":false,"error":{"code":"E_TOO_LONG","message":"text 3 has 900 tokens"}}'`)
	_, err := RunExternalCudaWorker(context.Background(), known, echoRequest(t, "{}"), testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeTooLong, "worker: text 3 has 900 tokens")
	unknown := script(t, dir, "unknown.sh", `cat >/dev/null
echo '{"ok":false,"error":{"code":"E_MARTIAN","message":"no"}}'`)
	_, err = RunExternalCudaWorker(context.Background(), unknown, echoRequest(t, "{}"), testOptions(misbehaviourTimeout))
	wantCode(t, err, CodeInternal, "E_MARTIAN")
}

func TestRunnerWriterBeforeReaderDoesNotDeadlock(t *testing.T) {
	// 1 MiB to stderr before reading a 4 MiB stdin: both pipes would fill
	// if stdin were written before stderr is drained.
	dir := t.TempDir()
	path := script(t, dir, "w.sh", `head -c 1048576 /dev/zero >&2
n=$(wc -c)
echo "{\"ok\":true,\"result\":$n}"`)
	big := bytes.Repeat([]byte("a"), 4<<20)
	opts := testOptions(10 * time.Second)
	opts.MaxStderrBytes = 100
	resp, err := RunExternalCudaWorker(context.Background(), path,
		StreamBytesRequest("echo", "", "raw", bytes.NewReader(big)), opts)
	if err != nil {
		t.Fatal(err)
	}
	// {"type":"echo","encoding":"raw","payload_b64":"<base64>"}\n
	want := len(`{"type":"echo","encoding":"raw","payload_b64":""}`) + 1 + (len(big)+2)/3*4
	if string(resp.Result) != fmt.Sprint(want) {
		t.Fatalf("the worker read %s bytes, want %d", resp.Result, want)
	}
}

func TestRunnerMissingAndNonExecutableBinaries(t *testing.T) {
	dir := t.TempDir()
	_, err := RunExternalCudaWorker(context.Background(), filepath.Join(dir, "gone"), nil, testOptions(time.Second))
	wantCode(t, err, CodeWorkerNotFound, "gone", "does not exist")
	p := filepath.Join(dir, "plain")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = RunExternalCudaWorker(context.Background(), p, nil, testOptions(time.Second))
	wantCode(t, err, CodeWorkerSpawn, "plain")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = RunExternalCudaWorker(ctx, p, nil, testOptions(time.Second))
	wantCode(t, err, CodeCancelled)
}

func TestRunnerRealCudaWorker(t *testing.T) {
	bin := cudaWorkerBin(t)
	ctx := context.Background()
	opts := RunOptions{Timeout: 20 * time.Second}

	resp, err := RunExternalCudaWorker(ctx, bin, echoRequest(t, `{"text":"héllo","n":[1,2.5]}`), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonValue(t, resp.Result); fmt.Sprint(got) != fmt.Sprint(jsonValue(t, []byte(`{"text":"héllo","n":[1,2.5]}`))) {
		t.Fatalf("echo gave %s", resp.Result)
	}
	if resp.Encoding != "json" {
		t.Fatalf("encoding %q", resp.Encoding)
	}

	// payload_b64 of JSON is sniffed and echoed as JSON.
	r, _ := Request{Type: "echo", Bytes: []byte(`{"a":[1,2]}`)}.Reader()
	resp, err = RunExternalCudaWorker(ctx, bin, r, opts)
	if err != nil || string(resp.Result) != `{"a":[1,2]}` {
		t.Fatalf("%v %+v", err, resp)
	}

	// Raw bytes (3 MiB, every byte value, more than a pipe buffer) go as
	// payload_b64; the worker answers with a binary frame, kept undecoded.
	raw := make([]byte, 3<<20)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	resp, err = RunExternalCudaWorker(ctx, bin, StreamBytesRequest("echo", "b1", "raw", bytes.NewReader(raw)), opts)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Frame == nil || resp.Frame.Format != FrameCBOR || !bytes.Contains(resp.Frame.Body, raw) {
		t.Fatalf("expected a CBOR frame holding the bytes, got %+v", resp.Encoding)
	}

	_, err = RunExternalCudaWorker(ctx, bin, echoRequest(t, "1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := Request{Type: "no_such_job", Payload: json.RawMessage("1")}.MarshalLine(0)
	_, err = RunExternalCudaWorker(ctx, bin, bytes.NewReader(line), opts)
	wantCode(t, err, CodeUnknownType, "worker: ")

	// A malformed envelope is the engine's own code, passed through.
	_, err = RunExternalCudaWorker(ctx, bin, strings.NewReader(`{"type":"echo","payload_b64":"e30$"}`), opts)
	wantCode(t, err, CodeBadBase64, "offset 3")
}

func TestRunnerRealCudaWorkerDiscovered(t *testing.T) {
	bin := cudaWorkerBin(t)
	// CUDA_WORKER_PATH pins the binary; discovery finds exactly it.
	path, source, err := FindCudaWorkerPath(DiscoveryOptions{Env: &DiscoveryEnv{CudaWorkerPath: bin}})
	if err != nil || path != bin || source != SourceEnv {
		t.Fatalf("%s %s %v", path, source, err)
	}
	resp, err := RunExternalCudaWorker(context.Background(), path, echoRequest(t, `"x"`), RunOptions{})
	if err != nil || string(resp.Result) != `"x"` {
		t.Fatalf("%v %+v", err, resp)
	}
}

func TestRunnerLeavesNoGoroutinesOrDescriptors(t *testing.T) {
	dir := t.TempDir()
	bodies := []string{
		"sleep 1000",
		"cat >/dev/null; echo oops >&2; exit 3",
		"head -c 100000000 /dev/zero",
		"cat >/dev/null; (sleep 1000) & echo '{\"ok\":true,\"result\":1}'",
		"echo '{\"ok\":true,\"result\":1}'", // never reads its stdin
	}
	var paths []string
	for i, b := range bodies {
		paths = append(paths, script(t, dir, fmt.Sprintf("w%d.sh", i), b))
	}
	run := func() {
		for _, p := range paths {
			big := bytes.Repeat([]byte("z"), 1<<20)
			_, _ = RunExternalCudaWorker(context.Background(), p, StreamBytesRequest("echo", "", "", bytes.NewReader(big)), testOptions(300*time.Millisecond))
		}
	}
	run() // warm up (the runtime's own goroutines, the subreaper)
	time.Sleep(50 * time.Millisecond)
	goroutines, fds := runtime.NumGoroutine(), fdCount()
	for i := 0; i < 3; i++ {
		run()
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before, %d after:\n%s", goroutines, n, buf[:runtime.Stack(buf, true)])
	}
	if n := fdCount(); n > fds {
		t.Errorf("%d descriptors before, %d after", fds, n)
	}
}
