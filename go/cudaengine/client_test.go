//go:build linux

package cudaengine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startService runs `node bin/cuda-service.mjs --port 0` from the repo root
// and returns its base URL (from the {"listening": URL} line it prints).
func startService(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	addon := filepath.Join(root, "cuda-engine.linux-x64-gnu.node")
	if _, err := os.Stat(addon); err != nil {
		requireOrSkip(t, "no built addon at %s (build it with `npx napi build --platform --release`)", addon)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		requireOrSkip(t, "node is not on PATH")
	}
	cmd := exec.Command(node, "bin/cuda-service.mjs", "--port", "0")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CUDA_SERVICE_LOG=0", "CUDA_ENGINE_OPTIONS={}")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var v struct {
				Listening string `json:"listening"`
			}
			if json.Unmarshal(sc.Bytes(), &v) == nil && v.Listening != "" {
				lines <- v.Listening
				break
			}
		}
		close(lines)
		_, _ = bufio.NewReader(out).WriteTo(discard{})
	}()
	select {
	case u, ok := <-lines:
		if !ok {
			t.Fatalf("the service exited without printing its address; stderr:\n%s", stderr.String())
		}
		return u
	case <-time.After(60 * time.Second):
		t.Fatalf("the service printed no address within 60 s; stderr:\n%s", stderr.String())
	}
	return ""
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestClientAgainstTheService(t *testing.T) {
	c := NewClient(startService(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Status == "" || h.Version == "" || h.HTTPStatus == 0 || len(h.Raw) == 0 {
		t.Fatalf("health %+v", h)
	}

	r, err := c.Submit(ctx, Request{Type: "echo", JobID: "g1", Payload: json.RawMessage(`{"text":"hi","n":[1,2.5]}`)}, SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "g1" || r.Type != "echo" || !r.OK || r.Encoding != "json" || string(r.Result) != `{"text":"hi","n":[1,2.5]}` {
		t.Fatalf("echo %s", r.Raw)
	}

	raw := []byte{0, 1, 2, 0xfe, 0xff}
	r, err = c.Submit(ctx, Request{Type: "echo", Bytes: raw}, SubmitOptions{Target: "local"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Bytes, raw) || r.Encoding != "raw" {
		t.Fatalf("bytes echo %s", r.Raw)
	}

	_, err = c.SubmitEnvelope(ctx, []byte(`{"type":"echo","payload_b64":"e30$"}`), SubmitOptions{})
	wantCode(t, err, CodeBadBase64, "offset 3")
	if e := err.(*Error); e.Status != 400 || e.HTTPStatus() != 400 {
		t.Errorf("status %d", e.Status)
	}
	_, err = c.SubmitEnvelope(ctx, []byte(`{"type":"echo",`), SubmitOptions{})
	wantCode(t, err, CodeBadJSON)
	_, err = c.Submit(ctx, Request{Type: "no_such_job", Payload: json.RawMessage("1")}, SubmitOptions{Target: "local"})
	wantCode(t, err, CodeUnknownType)
	if e := err.(*Error); e.Status != CodeUnknownType.HTTPStatus() {
		t.Errorf("E_UNKNOWN_TYPE came with HTTP %d, the table says %d", e.Status, CodeUnknownType.HTTPStatus())
	}

	// Deadlines: one that has passed fails at once, without a request.
	past, cancelPast := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancelPast()
	_, err = c.Submit(past, Request{Type: "echo", Payload: json.RawMessage("1")}, SubmitOptions{})
	wantCode(t, err, CodeTimeout, "deadline")
	cancelled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	_, err = c.Health(cancelled)
	wantCode(t, err, CodeCancelled)

	// The engine's own embedding job, when a model is installed.
	r, err = c.Submit(ctx, Request{Type: "embedding", Payload: json.RawMessage(`{"texts":["hello","world"]}`)}, SubmitOptions{})
	switch {
	case CodeOf(err) == CodeModel:
		t.Logf("no model installed: %v", err)
	case err != nil:
		t.Fatal(err)
	default:
		var emb struct {
			Dims       int         `json:"dims"`
			Embeddings [][]float64 `json:"embeddings"`
		}
		if json.Unmarshal(r.Result, &emb) != nil || len(emb.Embeddings) != 2 || len(emb.Embeddings[0]) != emb.Dims {
			t.Fatalf("embedding result %.200s", r.Result)
		}
	}
}

func TestClientEmbeddingsRoute(t *testing.T) {
	c := NewClient(startService(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := c.Embeddings(ctx, EmbeddingsRequest{Input: []string{"hello", "world"}})
	if e, ok := err.(*Error); ok && e.Status == 404 && strings.Contains(e.Message, "no route") {
		fmt.Printf("SKIPPED %s: the service has no /v1/embeddings route yet (%s)\n", t.Name(), e.Message)
		t.Skip("SKIPPED: the service has no /v1/embeddings route yet")
	}
	if CodeOf(err) == CodeModel {
		fmt.Printf("SKIPPED %s: no model installed (%v)\n", t.Name(), err)
		t.Skip("SKIPPED: no model installed")
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Data) != 2 || len(resp.Data[0].Embedding) == 0 || resp.Data[1].Index != 1 {
		t.Fatalf("embeddings %+v", resp)
	}
	b64, err := c.Embeddings(ctx, EmbeddingsRequest{Input: []string{"hello", "world"}, EncodingFormat: "base64"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range resp.Data {
		a, b := resp.Data[i].Embedding, b64.Data[i].Embedding
		if len(a) != len(b) {
			t.Fatalf("float and base64 lengths differ: %d %d", len(a), len(b))
		}
		for j := range a {
			if math.Abs(float64(a[j]-b[j])) > 1e-6 {
				t.Fatalf("vector %d differs at %d: %v vs %v", i, j, a[j], b[j])
			}
		}
	}
	_, err = c.Embeddings(ctx, EmbeddingsRequest{Input: 12})
	if err == nil || err.(*Error).Status != 400 {
		t.Errorf("a bad input gave %v", err)
	}
}

func TestClientTransportErrorsCarryNoCode(t *testing.T) {
	c := NewClient("http://127.0.0.1:1")
	_, err := c.Health(context.Background())
	if err == nil || CodeOf(err) != "" {
		t.Fatalf("got %v", err)
	}
}
