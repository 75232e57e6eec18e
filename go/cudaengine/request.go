package cudaengine

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
)

// Request is one job for a worker (docs/worker-protocol.md "Requests").
// Exactly one of Payload (JSON) and Bytes is used; bytes travel as
// `payload_b64` (standard base64), never as CBOR or MessagePack.
type Request struct {
	// Type is the job type: "embedding", "inference", "echo", or your own.
	Type string
	// JobID is the caller's id for the job (the envelope's `id`), sent as
	// `job_id`; empty for none.
	JobID string
	// Payload is the JSON payload.
	Payload json.RawMessage
	// Bytes is a raw payload, sent as `payload_b64`.
	Bytes []byte
	// Encoding tells the worker how to read Bytes: "raw", "cbor", "msgpack"
	// or "json"; empty lets it sniff (JSON if the bytes parse, else raw).
	Encoding string
}

// MarshalLine encodes the request as one compact JSON line ending in "\n",
// with `id` first when id > 0 (persistent mode).
func (r Request) MarshalLine(id uint64) ([]byte, error) {
	if r.Type == "" {
		return nil, newError(CodeEnvelope, "`type` is missing: name the job type (e.g. \"embedding\", \"echo\")")
	}
	if r.Payload != nil && r.Bytes != nil {
		return nil, newError(CodeEnvelope, "the request has both `Payload` and `Bytes`: send exactly one")
	}
	var b bytes.Buffer
	b.WriteByte('{')
	if id > 0 {
		b.WriteString(`"id":`)
		b.WriteString(uintString(id))
		b.WriteByte(',')
	}
	b.WriteString(`"type":`)
	writeJSONString(&b, r.Type)
	if r.JobID != "" {
		b.WriteString(`,"job_id":`)
		writeJSONString(&b, r.JobID)
	}
	if r.Bytes != nil {
		if r.Encoding != "" {
			b.WriteString(`,"encoding":`)
			writeJSONString(&b, r.Encoding)
		}
		b.WriteString(`,"payload_b64":"`)
		enc := base64.NewEncoder(base64.StdEncoding, &b)
		_, _ = enc.Write(r.Bytes)
		_ = enc.Close()
		b.WriteByte('"')
	} else {
		payload := r.Payload
		if payload == nil {
			payload = json.RawMessage("null")
		}
		b.WriteString(`,"payload":`)
		// Compact: a persistent-mode line may hold no raw newline.
		if err := json.Compact(&b, payload); err != nil {
			return nil, wrapError(CodeBadJSON, err, "`payload` is not valid JSON: %v", err)
		}
	}
	b.WriteString("}\n")
	return b.Bytes(), nil
}

// Reader is the one-shot request as a stream for RunExternalCudaWorker.
func (r Request) Reader() (io.Reader, error) {
	line, err := r.MarshalLine(0)
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(line), nil
}

// StreamBytesRequest is a one-shot request whose raw payload is read from
// payload and base64-encoded on the fly into `payload_b64`, so a large
// payload is never held in memory twice. encoding is as in Request.
// RunExternalCudaWorker stops the encoder when it gives up on the job.
func StreamBytesRequest(jobType, jobID, encoding string, payload io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		var head bytes.Buffer
		head.WriteString(`{"type":`)
		writeJSONString(&head, jobType)
		if jobID != "" {
			head.WriteString(`,"job_id":`)
			writeJSONString(&head, jobID)
		}
		if encoding != "" {
			head.WriteString(`,"encoding":`)
			writeJSONString(&head, encoding)
		}
		head.WriteString(`,"payload_b64":"`)
		if _, err := pw.Write(head.Bytes()); err != nil {
			return
		}
		enc := base64.NewEncoder(base64.StdEncoding, pw)
		if _, err := io.Copy(enc, payload); err != nil {
			pw.CloseWithError(err)
			return
		}
		if err := enc.Close(); err != nil {
			return
		}
		if _, err := pw.Write([]byte("\"}\n")); err != nil {
			return
		}
		pw.Close()
	}()
	return &streamRequest{pr}
}

type streamRequest struct{ *io.PipeReader }

// abandon ends the encoding goroutine (its writes fail from now on).
func (s *streamRequest) abandon() { s.PipeReader.Close() }

func writeJSONString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s)
	b.Write(q)
}

func uintString(n uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(buf[i:])
		}
	}
}
