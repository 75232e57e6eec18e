//go:build linux

package cudaengine

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A shell worker speaking the persistent protocol: it answers each line
// with its id, running `$ACTION` first (echo the id by default).
const fakeServe = `D='%s'
echo $$ > "$D/pid"
while IFS= read -r line; do
  id=$(printf '%%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in *'"cancel":true'*) continue;; esac
  %s
done`

func fakeWorker(t *testing.T, action string, opts PersistentOptions) (*PersistentWorker, string) {
	t.Helper()
	dir := t.TempDir()
	path := script(t, dir, "serve.sh", fmt.Sprintf(fakeServe, dir, action))
	opts.ReapOrphans = true
	opts.Args = []string{}
	w := NewPersistentWorker(path, opts)
	t.Cleanup(func() { w.Close() })
	return w, dir
}

func call(t *testing.T, w *PersistentWorker, payload string) (*Response, error) {
	t.Helper()
	return w.Call(context.Background(), Request{Type: "echo", Payload: json.RawMessage(payload)})
}

func TestPersistentRealCudaWorkerManyInFlight(t *testing.T) {
	bin := cudaWorkerBin(t)
	w := NewPersistentWorker(bin, PersistentOptions{Timeout: 20 * time.Second, ReapOrphans: true})
	defer w.Close()
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := fmt.Sprintf(`{"n":%d,"text":"job %d"}`, i, i)
			resp, err := w.Call(context.Background(), Request{Type: "echo", JobID: fmt.Sprint("j", i), Payload: json.RawMessage(want)})
			if err != nil {
				errs <- err
				return
			}
			var got, exp interface{}
			_ = json.Unmarshal(resp.Result, &got)
			_ = json.Unmarshal([]byte(want), &exp)
			if fmt.Sprint(got) != fmt.Sprint(exp) {
				errs <- fmt.Errorf("job %d got %s", i, resp.Result)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_, err := w.Call(context.Background(), Request{Type: "no_such_job", Payload: json.RawMessage("1")})
	wantCode(t, err, CodeUnknownType)
	if h := w.Health(); !h.Running || h.Restarts != 0 || h.InFlight != 0 {
		t.Errorf("health %+v", h)
	}
	_, err = w.Call(context.Background(), Request{Type: "echo", Bytes: []byte{1, 2}})
	wantCode(t, err, CodeInvalidArg)
	pid := w.Health().PID
	w.Close()
	if left := groupMembers(pid); len(left) > 0 {
		t.Errorf("left after Close: %v", left)
	}
	_, err = call(t, w, "1")
	wantCode(t, err, CodeClosed)
}

func TestPersistentFakeWorkerAnswersByID(t *testing.T) {
	w, _ := fakeWorker(t, `echo "{\"id\":$id,\"ok\":true,\"result\":$id}"`, PersistentOptions{Timeout: 5 * time.Second})
	for i := 1; i <= 3; i++ {
		resp, err := call(t, w, "null")
		if err != nil || string(resp.Result) != fmt.Sprint(i) {
			t.Fatalf("%v %+v", err, resp)
		}
	}
}

func TestPersistentAnswersWrittenJustBeforeExitArrive(t *testing.T) {
	// The worker collects three jobs, answers all three and exits at once:
	// every answer written before the exit must reach its caller.
	w, _ := fakeWorker(t, `n=$((n+1)); out="$out{\"id\":$id,\"ok\":true,\"result\":$id}\n"
  if [ $n -eq 3 ]; then printf "$out"; exit 0; fi`, PersistentOptions{Timeout: 5 * time.Second})
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := call(t, w, "1"); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
		// Let the exit be seen, so that the next round goes to a new process.
		for end := time.Now().Add(2 * time.Second); w.Health().Running && time.Now().Before(end); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if h := w.Health(); h.Restarts != 2 {
		t.Errorf("health %+v", h)
	}
}

func TestPersistentCrashFailsJobsInFlightAtOnce(t *testing.T) {
	w, dir := fakeWorker(t, `echo 'dying' >&2; exit 7`, PersistentOptions{Timeout: 20 * time.Second})
	start := time.Now()
	_, err := call(t, w, "1")
	wantCode(t, err, CodeWorkerExit, "exited with code 7", "dying")
	if time.Since(start) > time.Second {
		t.Errorf("the caller learned after %v", time.Since(start))
	}
	if left := groupMembers(readPid(t, filepath.Join(dir, "pid"))); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

func TestPersistentHungWorkerIsKilledAtTheTimeout(t *testing.T) {
	w, dir := fakeWorker(t, `sleep 1000`, PersistentOptions{Timeout: 500 * time.Millisecond})
	start := time.Now()
	_, err := call(t, w, "1")
	wantCode(t, err, CodeWorkerTimeout, "hung")
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("took %v", took)
	}
	pid := readPid(t, filepath.Join(dir, "pid"))
	deadline := time.Now().Add(time.Second)
	for len(groupMembers(pid)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if left := groupMembers(pid); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

func TestPersistentGarbageAndHugeLines(t *testing.T) {
	w, _ := fakeWorker(t, `echo 'not json at all'`, PersistentOptions{Timeout: 5 * time.Second})
	_, err := call(t, w, "1")
	wantCode(t, err, CodeWorkerProtocol, "not json at all")

	w, _ = fakeWorker(t, `head -c 3000000 /dev/zero | tr '\0' x`, PersistentOptions{Timeout: 5 * time.Second, MaxOutputBytes: 1 << 20})
	_, err = call(t, w, "1")
	wantCode(t, err, CodeOutputLimit)

	w, _ = fakeWorker(t, `echo '{"ok":true,"result":1}'`, PersistentOptions{Timeout: 5 * time.Second})
	_, err = call(t, w, "1")
	wantCode(t, err, CodeWorkerProtocol, "no `id`")

	w, _ = fakeWorker(t, `printf '\301\001\000\000\000\001\240'`, PersistentOptions{Timeout: 5 * time.Second})
	_, err = call(t, w, "1")
	wantCode(t, err, CodeWorkerProtocol, "binary frame")
}

func TestPersistentCancelSendsCancel(t *testing.T) {
	// The worker records every line; after a cancelled job it must have
	// seen {"id":1,"cancel":true}.
	dir := t.TempDir()
	path := script(t, dir, "serve.sh", fmt.Sprintf(`while IFS= read -r line; do printf '%%s\n' "$line" >> '%s/lines'; done`, dir))
	w := NewPersistentWorker(path, PersistentOptions{Args: []string{}, ReapOrphans: true})
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := w.Call(ctx, Request{Type: "echo", Payload: json.RawMessage("1")})
	wantCode(t, err, CodeWorkerTimeout, "deadline")
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel2)
	_, err = w.Call(ctx2, Request{Type: "echo", Payload: json.RawMessage("2")})
	wantCode(t, err, CodeCancelled)
	w.Close()
	lines := string(mustRead(t, filepath.Join(dir, "lines")))
	want := "{\"id\":1,\"type\":\"echo\",\"payload\":1}\n{\"id\":1,\"cancel\":true}\n{\"id\":2,\"type\":\"echo\",\"payload\":2}\n{\"id\":2,\"cancel\":true}\n"
	if lines != want {
		t.Errorf("the worker read:\n%s\nwant:\n%s", lines, want)
	}
}

func TestPersistentMissingBinary(t *testing.T) {
	w := NewPersistentWorker(filepath.Join(t.TempDir(), "gone"), PersistentOptions{})
	wantCode(t, w.Start(context.Background()), CodeWorkerNotFound, "gone")
}
