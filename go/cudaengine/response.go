package cudaengine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// Binary frames (docs/worker-protocol.md "Binary frames").
const (
	FrameTag         = 0xC1
	FrameHeaderLen   = 6
	FrameCBOR        = 0x01
	FrameMessagePack = 0x02
)

// Frame is a binary frame a worker answered with (a bytes result). Its Body
// is one CBOR (Format 0x01) or MessagePack (0x02) map with the keys of a
// JSON response (`ok`, `encoding`, `result` as a byte string). This package
// has no codec for it: decode it with one of your choice, or send JSON jobs.
type Frame struct {
	Format byte
	Body   []byte
}

// Response is a worker's successful answer.
type Response struct {
	// Encoding of the result: "json", or for bytes "raw", "cbor", "msgpack".
	Encoding string
	// Result is the JSON result (when the worker sent `result`).
	Result json.RawMessage
	// Bytes is a byte result sent as `result_b64`.
	Bytes []byte
	// Frame is set instead when the worker answered with a binary frame.
	Frame *Frame
	// Stderr is the tail of what the worker wrote to stderr.
	Stderr string
}

func staticEncoding(s, def string) string {
	if validEncoding(s) {
		return s
	}
	return def
}

// workerError maps an `ok: false` reply: one of the engine's codes is kept
// (the message prefixed "worker: "), any other becomes E_INTERNAL naming it.
func workerError(code, message string) *Error {
	if message == "" {
		message = "(no message)"
	}
	if info, ok := LookupCode(code); ok {
		return newError(info.Code, "worker: %s", message)
	}
	if code == "" {
		code = "(none)"
	}
	return newError(CodeInternal, "worker failed with code %s: %s", code, message)
}

type wireResponse struct {
	ID        json.RawMessage `json:"id"`
	OK        *bool           `json:"ok"`
	Result    json.RawMessage `json:"result"`
	ResultB64 json.RawMessage `json:"result_b64"`
	Encoding  json.RawMessage `json:"encoding"`
	Error     json.RawMessage `json:"error"`
}

// parseJSONResponse parses one JSON response. It returns the response id
// (hasID false when absent), the outcome (a Response or an *Error the
// worker reported), or a protocol complaint `why`.
func parseJSONResponse(text []byte) (id uint64, hasID bool, resp *Response, jobErr *Error, why string) {
	t := trimASCIISpace(text)
	if jsonKind(t) != "an object" || !json.Valid(t) {
		if !json.Valid(t) {
			return 0, false, nil, nil, "not JSON"
		}
		return 0, false, nil, nil, "the response is not a JSON object"
	}
	var w wireResponse
	if err := json.Unmarshal(t, &w); err != nil {
		return 0, false, nil, nil, "not JSON (" + err.Error() + ")"
	}
	if w.ID != nil && jsonKind(w.ID) != "null" {
		n, err := strconv.ParseUint(string(w.ID), 10, 64)
		if err != nil {
			return 0, false, nil, nil, "`id` is not an unsigned integer"
		}
		id, hasID = n, true
	}
	if w.OK == nil {
		return id, hasID, nil, nil, "`ok` is missing or not a boolean"
	}
	if !*w.OK {
		var e struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		var s string
		if json.Unmarshal(w.Error, &s) == nil {
			e.Message = s
		} else {
			_ = json.Unmarshal(w.Error, &e)
		}
		return id, hasID, nil, workerError(e.Code, e.Message), ""
	}
	var enc string
	_ = json.Unmarshal(w.Encoding, &enc)
	if w.ResultB64 != nil && jsonKind(w.ResultB64) != "null" {
		var s string
		if json.Unmarshal(w.ResultB64, &s) != nil {
			return id, hasID, nil, nil, "`result_b64` is not a string"
		}
		b, err := DecodeBase64(s, "result_b64")
		if err != nil {
			return id, hasID, nil, nil, err.(*Error).Message
		}
		return id, hasID, &Response{Encoding: staticEncoding(enc, EncodingRaw), Bytes: b}, nil, ""
	}
	if w.Result == nil {
		return id, hasID, nil, nil, "`ok: true` without `result` or `result_b64`"
	}
	return id, hasID, &Response{Encoding: staticEncoding(enc, EncodingJSON), Result: w.Result}, nil, ""
}

// parseOneshotOutput reads all of a one-shot worker's stdout: one JSON
// response (optionally surrounded by whitespace) or exactly one frame.
func parseOneshotOutput(out []byte) (*Response, *Error, string) {
	start := 0
	for start < len(out) && isASCIISpace(out[start]) {
		start++
	}
	data := out[start:]
	if len(data) == 0 {
		return nil, nil, "exited 0 without writing a response to stdout"
	}
	if data[0] == FrameTag {
		if len(data) < FrameHeaderLen {
			return nil, nil, "wrote a truncated frame header"
		}
		format := data[1]
		if format != FrameCBOR && format != FrameMessagePack {
			return nil, nil, fmt.Sprintf("unknown frame format byte 0x%02x", format)
		}
		n := int(uint32(data[2])<<24 | uint32(data[3])<<16 | uint32(data[4])<<8 | uint32(data[5]))
		rest := data[FrameHeaderLen:]
		if len(rest) != n {
			return nil, nil, fmt.Sprintf("wrote a frame announcing %d bytes followed by %d", n, len(rest))
		}
		return &Response{Frame: &Frame{Format: format, Body: append([]byte(nil), rest...)}}, nil, ""
	}
	_, _, resp, jobErr, why := parseJSONResponse(data)
	if why != "" {
		return nil, nil, fmt.Sprintf("wrote an invalid response: %s: %s", why, snippet(data))
	}
	return resp, jobErr, ""
}

// snippet quotes the first 200 bytes of data for a message.
func snippet(data []byte) string {
	n := len(data)
	if n > 200 {
		n = 200
	}
	s := strconv.Quote(string(bytes.ToValidUTF8(data[:n], []byte("\uFFFD"))))
	if len(data) > n {
		return s + "…"
	}
	return s
}
