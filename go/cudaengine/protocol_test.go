package cudaengine

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRequestLines(t *testing.T) {
	line, err := Request{Type: "echo", JobID: "a\"1", Payload: json.RawMessage("{\n \"x\": [1, 2]\n}")}.MarshalLine(7)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"id":7,"type":"echo","job_id":"a\"1","payload":{"x":[1,2]}}` + "\n"; string(line) != want {
		t.Fatalf("%s", line)
	}
	line, _ = Request{Type: "echo", Bytes: []byte{0, 255}, Encoding: "raw"}.MarshalLine(0)
	if want := `{"type":"echo","encoding":"raw","payload_b64":"AP8="}` + "\n"; string(line) != want {
		t.Fatalf("%s", line)
	}
	if _, err := (Request{Payload: json.RawMessage("1")}).MarshalLine(0); CodeOf(err) != CodeEnvelope {
		t.Fatal(err)
	}
	if _, err := (Request{Type: "x", Payload: json.RawMessage("{")}).MarshalLine(0); CodeOf(err) != CodeBadJSON {
		t.Fatal(err)
	}
	if _, err := (Request{Type: "x", Payload: json.RawMessage("1"), Bytes: []byte{1}}).MarshalLine(0); CodeOf(err) != CodeEnvelope {
		t.Fatal(err)
	}
	env, _ := Request{Type: "echo", JobID: "j", Bytes: []byte("hi")}.envelopeJSON()
	if string(env) != `{"type":"echo","id":"j","payload_b64":"aGk="}` {
		t.Fatalf("%s", env)
	}
}

func TestStreamBytesRequestIsAnEnvelope(t *testing.T) {
	payload := bytes.Repeat([]byte{1, 2, 3, 250}, 100000)
	text, err := io.ReadAll(StreamBytesRequest("echo", "s1", "raw", bytes.NewReader(payload)))
	if err != nil {
		t.Fatal(err)
	}
	env, err := DecodeEnvelope(text, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if env.Type != "echo" || env.Encoding != "raw" || !bytes.Equal(env.Bytes, payload) {
		t.Fatalf("%+v", env.Type)
	}
	// A reader that fails ends the stream with its error.
	_, err = io.ReadAll(StreamBytesRequest("echo", "", "", io.MultiReader(strings.NewReader("ab"), failingReader{})))
	if err == nil || !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("got %v", err)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestOneshotOutputParsing(t *testing.T) {
	for _, c := range []struct {
		out, why string
		code     Code
	}{
		{out: "", why: "without writing a response"},
		{out: " \n", why: "without writing a response"},
		{out: "garbage", why: "invalid response: not JSON"},
		{out: "[1]", why: "not a JSON object"},
		{out: `{"result":1}`, why: "`ok` is missing"},
		{out: `{"ok":true}`, why: "without `result`"},
		{out: `{"ok":true,"result_b64":"e30$"}`, why: "offset 3"},
		{out: `{"ok":"yes","result":1}`, why: "not JSON"},
		{out: `{"id":-1,"ok":true,"result":1}`, why: "`id` is not an unsigned integer"},
		{out: "\xc1\x01\x00", why: "truncated frame header"},
		{out: "\xc1\x07\x00\x00\x00\x00", why: "unknown frame format byte 0x07"},
		{out: "\xc1\x01\x00\x00\x00\x05ab", why: "announcing 5 bytes followed by 2"},
		{out: `{"ok":false,"error":{"code":"E_TOO_LONG","message":"m"}}`, code: CodeTooLong},
		{out: `{"ok":false,"error":"plain"}`, code: CodeInternal},
		{out: `{"ok":false}`, code: CodeInternal},
	} {
		resp, jobErr, why := parseOneshotOutput([]byte(c.out))
		switch {
		case c.why != "":
			if !strings.Contains(why, c.why) {
				t.Errorf("%q: why %q, want %q (resp %+v, err %v)", c.out, why, c.why, resp, jobErr)
			}
		case jobErr == nil || jobErr.Code != c.code:
			t.Errorf("%q: got %v %q, want %s", c.out, jobErr, why, c.code)
		}
	}
	resp, _, why := parseOneshotOutput([]byte(" {\"ok\":true,\"encoding\":\"weird\",\"result\":[1]}\n\n"))
	if why != "" || resp.Encoding != "json" || string(resp.Result) != "[1]" {
		t.Fatalf("%+v %s", resp, why)
	}
	resp, _, _ = parseOneshotOutput([]byte(`{"ok":true,"result_b64":"AP8"}`))
	if !bytes.Equal(resp.Bytes, []byte{0, 255}) || resp.Encoding != "raw" {
		t.Fatalf("%+v", resp)
	}
	resp, _, _ = parseOneshotOutput([]byte("\xc1\x02\x00\x00\x00\x01\x80"))
	if resp.Frame == nil || resp.Frame.Format != FrameMessagePack || !bytes.Equal(resp.Frame.Body, []byte{0x80}) {
		t.Fatalf("%+v", resp)
	}
}

func TestStderrTail(t *testing.T) {
	tl := newStderrTail(4)
	tl.push([]byte("abc"))
	tl.push([]byte("def"))
	if got := tl.text(); got != "[2 earlier bytes dropped] cdef" {
		t.Fatal(got)
	}
	tl.push([]byte("0123456789"))
	if got := tl.text(); got != "[12 earlier bytes dropped] 6789" {
		t.Fatal(got)
	}
	for i := 0; i < 1000; i++ {
		tl.push([]byte("x"))
	}
	if len(tl.buf) > 8 {
		t.Fatalf("buffer grew to %d", len(tl.buf))
	}
	if newStderrTail(4).suffix() != "; stderr was empty" {
		t.Fatal("empty suffix")
	}
}
