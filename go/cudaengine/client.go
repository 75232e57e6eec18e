package cudaengine

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls the engine's HTTP service (bin/cuda-service.mjs, default
// http://127.0.0.1:8096). Every method takes a context: its deadline bounds
// the whole exchange and, for submit, is passed to the engine as
// `timeoutMs` so that the job stops there too.
type Client struct {
	// BaseURL of the service, e.g. "http://127.0.0.1:8096".
	BaseURL string
	// HTTPClient to use; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Token, when set, is sent as "Authorization: Bearer <token>".
	Token string
	// MaxResponseBytes bounds a response body (default 1 GiB).
	MaxResponseBytes int64
}

// NewClient returns a client for the service at baseURL.
func NewClient(baseURL string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/")}
}

// Health is the service's GET /api/v1/health answer.
type Health struct {
	// Status is "ok", "degraded" or "error" (the service answers 503 then).
	Status        string `json:"status"`
	Version       string `json:"version"`
	Backend       string `json:"backend"`
	CudaAvailable bool   `json:"cuda_available"`
	// HTTPStatus is the status the service answered with.
	HTTPStatus int `json:"-"`
	// Raw is the whole JSON document (docs: README "Health").
	Raw json.RawMessage `json:"-"`
}

// SubmitOptions are the query parameters of POST /api/v1/submit.
type SubmitOptions struct {
	// Timeout is sent as timeoutMs; zero uses the context's deadline, if any.
	Timeout time.Duration
	// Target is "auto", "local" or "worker"; empty: the service's default.
	Target string
}

// SubmitResult is a job result in the service's JSON wire form.
type SubmitResult struct {
	ID       string          `json:"id"`
	Type     string          `json:"type"`
	OK       bool            `json:"ok"`
	Backend  string          `json:"backend"`
	Encoding string          `json:"encoding"`
	Result   json.RawMessage `json:"result"`
	// Bytes is a byte result (sent by the service as `result_b64`).
	Bytes     []byte             `json:"-"`
	ResultB64 string             `json:"result_b64"`
	TimingsMs map[string]float64 `json:"timings_ms"`
	// Raw is the whole JSON document.
	Raw json.RawMessage `json:"-"`
}

// EmbeddingsRequest is the OpenAI-compatible POST /v1/embeddings body.
type EmbeddingsRequest struct {
	// Input is a string, a []string, or token-id arrays ([][]int).
	Input interface{} `json:"input"`
	Model string      `json:"model,omitempty"`
	// EncodingFormat is "float" (default) or "base64" (little-endian
	// float32); either way Embedding.Embedding holds the numbers.
	EncodingFormat string `json:"encoding_format,omitempty"`
	Dimensions     int    `json:"dimensions,omitempty"`
	User           string `json:"user,omitempty"`
}

// Embedding is one vector of an EmbeddingsResponse.
type Embedding struct {
	Object    string
	Index     int
	Embedding []float32
}

// UnmarshalJSON reads `embedding` as a number array or as base64 of
// little-endian float32 values.
func (e *Embedding) UnmarshalJSON(b []byte) error {
	var w struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	e.Object, e.Index = w.Object, w.Index
	if jsonKind(w.Embedding) == "a string" {
		var s string
		if err := json.Unmarshal(w.Embedding, &s); err != nil {
			return err
		}
		raw, err := DecodeBase64(s, "embedding")
		if err != nil {
			return err
		}
		if len(raw)%4 != 0 {
			return newError(CodeBadBase64, "`embedding` is %d bytes, not a whole number of float32 values", len(raw))
		}
		e.Embedding = make([]float32, len(raw)/4)
		for i := range e.Embedding {
			e.Embedding[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		return nil
	}
	return json.Unmarshal(w.Embedding, &e.Embedding)
}

// EmbeddingsResponse is the OpenAI-compatible answer.
type EmbeddingsResponse struct {
	Object string      `json:"object"`
	Data   []Embedding `json:"data"`
	Model  string      `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

// Health calls GET /api/v1/health. A 503 with a health document is not an
// error: check Health.Status.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	status, body, err := c.do(ctx, http.MethodGet, "/api/v1/health", nil, nil)
	if err != nil {
		return nil, err
	}
	var h Health
	if (status == http.StatusOK || status == http.StatusServiceUnavailable) && json.Unmarshal(body, &h) == nil && h.Status != "" {
		h.HTTPStatus, h.Raw = status, body
		return &h, nil
	}
	return nil, httpError(status, body)
}

// Submit sends one job as a JSON envelope: `payload` for Payload, or
// `payload_b64` (standard base64) for Bytes; JobID becomes the envelope's
// `id`.
func (c *Client) Submit(ctx context.Context, req Request, opts SubmitOptions) (*SubmitResult, error) {
	env, err := req.envelopeJSON()
	if err != nil {
		return nil, err
	}
	return c.SubmitEnvelope(ctx, env, opts)
}

// SubmitEnvelope sends an envelope given as JSON text (docs/envelope.md)
// as it is; the engine decodes and checks it.
func (c *Client) SubmitEnvelope(ctx context.Context, envelope []byte, opts SubmitOptions) (*SubmitResult, error) {
	q := url.Values{}
	timeout := opts.Timeout
	if dl, ok := ctx.Deadline(); ok && timeout <= 0 {
		if timeout = time.Until(dl); timeout <= 0 {
			return nil, contextError(ctx, CodeTimeout, "POST /api/v1/submit")
		}
	}
	if timeout > 0 {
		q.Set("timeoutMs", strconv.FormatInt(timeout.Milliseconds(), 10))
	}
	if opts.Target != "" {
		q.Set("target", opts.Target)
	}
	path := "/api/v1/submit"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	status, body, err := c.do(ctx, http.MethodPost, path, envelope, nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, httpError(status, body)
	}
	var r SubmitResult
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, wrapError(CodeBadJSON, err, "the service's submit answer is not JSON: %v: %s", err, snippet(body))
	}
	r.Raw = body
	if r.ResultB64 != "" {
		if r.Bytes, err = DecodeBase64(r.ResultB64, "result_b64"); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// Embeddings calls the OpenAI-compatible POST /v1/embeddings.
func (c *Client) Embeddings(ctx context.Context, req EmbeddingsRequest) (*EmbeddingsResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, wrapError(CodeInvalidArg, err, "the embeddings request cannot be encoded: %v", err)
	}
	status, resp, err := c.do(ctx, http.MethodPost, "/v1/embeddings", body, nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, httpError(status, resp)
	}
	var r EmbeddingsResponse
	if err := json.Unmarshal(resp, &r); err != nil {
		return nil, wrapError(CodeBadJSON, err, "the service's embeddings answer is not valid: %v: %s", err, snippet(resp))
	}
	return &r, nil
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, header http.Header) (int, []byte, error) {
	what := method + " " + path
	if ctx.Err() != nil {
		return 0, nil, contextError(ctx, CodeTimeout, what)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return 0, nil, wrapError(CodeInvalidArg, err, "%s: %v", what, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, contextError(ctx, CodeTimeout, what)
		}
		// A transport failure (refused, reset): no engine code.
		return 0, nil, fmt.Errorf("cuda-engine service %s: %w", what, err)
	}
	defer resp.Body.Close()
	limit := c.MaxResponseBytes
	if limit <= 0 {
		limit = 1 << 30
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, contextError(ctx, CodeTimeout, what)
		}
		return 0, nil, fmt.Errorf("cuda-engine service %s: reading the answer: %w", what, err)
	}
	if int64(len(data)) > limit {
		return 0, nil, newError(CodeTooLarge, "%s: the answer is over %d bytes (Client.MaxResponseBytes)", what, limit)
	}
	return resp.StatusCode, data, nil
}

// httpError reads the service's error shapes: {"ok":false,"error":{code,
// message}} and OpenAI's {"error":{message,type,code}}. The code is kept as
// the service sent it (the service has a few codes of its own, such as
// E_UNAUTHORIZED); Status is the HTTP status.
func httpError(status int, body []byte) *Error {
	var w struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &w) == nil && jsonKind(w.Error) == "an object" {
		var e struct {
			Code    interface{} `json:"code"`
			Message string      `json:"message"`
			Type    string      `json:"type"`
		}
		if json.Unmarshal(w.Error, &e) == nil {
			code, _ := e.Code.(string)
			return &Error{Code: Code(code), Message: e.Message, Status: status}
		}
	}
	return &Error{Message: "HTTP " + strconv.Itoa(status) + ": " + snippet(body), Status: status}
}

// envelopeJSON is the request as a service envelope (`id`, not `job_id`).
func (r Request) envelopeJSON() ([]byte, error) {
	if r.Type == "" {
		return nil, newError(CodeEnvelope, "`type` is missing: name the job type (e.g. \"embedding\", \"echo\")")
	}
	if r.Payload != nil && r.Bytes != nil {
		return nil, newError(CodeEnvelope, "the request has both `Payload` and `Bytes`: send exactly one")
	}
	var b bytes.Buffer
	b.WriteString(`{"type":`)
	writeJSONString(&b, r.Type)
	if r.JobID != "" {
		b.WriteString(`,"id":`)
		writeJSONString(&b, r.JobID)
	}
	if r.Bytes != nil {
		if r.Encoding != "" {
			b.WriteString(`,"encoding":`)
			writeJSONString(&b, r.Encoding)
		}
		b.WriteString(`,"payload_b64":"`)
		b.WriteString(base64.StdEncoding.EncodeToString(r.Bytes))
		b.WriteString(`"}`)
		return b.Bytes(), nil
	}
	payload := r.Payload
	if payload == nil {
		payload = json.RawMessage("null")
	}
	b.WriteString(`,"payload":`)
	if err := json.Compact(&b, payload); err != nil {
		return nil, wrapError(CodeBadJSON, err, "`payload` is not valid JSON: %v", err)
	}
	b.WriteString("}")
	return b.Bytes(), nil
}
