package cudaengine

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// The shared envelope cases: the file crates/core/tests/envelope_cases.rs
// reads, so the Go and Rust decoders agree on every input.
const envelopeCasesFile = "../../tests/envelope_cases.json"

type caseExpect struct {
	Error           Code             `json:"error"`
	MessageContains []string         `json:"message_contains"`
	Type            string           `json:"type"`
	ID              *string          `json:"id"`
	Encoding        string           `json:"encoding"`
	Payload         *json.RawMessage `json:"payload"`
	BytesB64        *string          `json:"bytes_b64"`
}

type envelopeCase struct {
	Name       string               `json:"name"`
	Field      string               `json:"field"`
	Input      *string              `json:"input"`
	InputB64   *string              `json:"input_b64"`
	InputParts [][2]json.RawMessage `json:"input_parts"`
	Limits     struct {
		MaxEnvelopeBytes *int `json:"max_envelope_bytes"`
		MaxJSONDepth     *int `json:"max_json_depth"`
	} `json:"limits"`
	Expect   caseExpect  `json:"expect"`
	GoExpect *caseExpect `json:"go_expect"`
}

func (c *envelopeCase) input(t *testing.T) []byte {
	switch {
	case c.Input != nil:
		return []byte(*c.Input)
	case c.InputB64 != nil:
		b, err := base64.StdEncoding.DecodeString(*c.InputB64)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var out bytes.Buffer
	for _, p := range c.InputParts {
		var text string
		var times int
		if json.Unmarshal(p[0], &text) != nil || json.Unmarshal(p[1], &times) != nil {
			t.Fatalf("bad input_parts entry %s", p)
		}
		out.WriteString(strings.Repeat(text, times))
	}
	return out.Bytes()
}

func (c *envelopeCase) expect() caseExpect {
	if c.GoExpect != nil {
		return *c.GoExpect
	}
	return c.Expect
}

func loadEnvelopeCases(t *testing.T, kind string) []envelopeCase {
	text, err := os.ReadFile(envelopeCasesFile)
	if err != nil {
		t.Fatalf("the shared cases: %v", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(text, &doc); err != nil {
		t.Fatal(err)
	}
	var cases []envelopeCase
	if err := json.Unmarshal(doc[kind], &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 20 {
		t.Fatalf("%s lost cases: %d", kind, len(cases))
	}
	return cases
}

func checkCaseError(t *testing.T, want caseExpect, err error) {
	t.Helper()
	if CodeOf(err) != want.Error {
		t.Fatalf("got %v, want %s", err, want.Error)
	}
	for _, part := range want.MessageContains {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("message %q lacks %q", err.Error(), part)
		}
	}
}

func wantBytes(t *testing.T, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSharedBase64Cases(t *testing.T) {
	for _, c := range loadEnvelopeCases(t, "base64_cases") {
		c := c
		t.Run(c.Name, func(t *testing.T) {
			field := c.Field
			if field == "" {
				field = "payload_b64"
			}
			got, err := DecodeBase64(string(c.input(t)), field)
			want := c.expect()
			if want.Error != "" {
				if err == nil {
					t.Fatalf("expected %s, decoded %d bytes", want.Error, len(got))
				}
				checkCaseError(t, want, err)
				return
			}
			if err != nil {
				t.Fatalf("expected bytes, got %v", err)
			}
			if !bytes.Equal(got, wantBytes(t, *want.BytesB64)) {
				t.Fatalf("decoded %x", got)
			}
		})
	}
}

func jsonValue(t *testing.T, b []byte) interface{} {
	var v interface{}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

func TestSharedEnvelopeCases(t *testing.T) {
	for _, c := range loadEnvelopeCases(t, "envelope_cases") {
		c := c
		t.Run(c.Name, func(t *testing.T) {
			limits := DefaultLimits()
			if c.Limits.MaxEnvelopeBytes != nil {
				limits.MaxEnvelopeBytes = *c.Limits.MaxEnvelopeBytes
			}
			if c.Limits.MaxJSONDepth != nil {
				limits.MaxJSONDepth = *c.Limits.MaxJSONDepth
			}
			env, err := DecodeEnvelope(c.input(t), limits)
			want := c.expect()
			if want.Error != "" {
				if err == nil {
					t.Fatalf("expected %s, decoded %+v", want.Error, env)
				}
				checkCaseError(t, want, err)
				return
			}
			if err != nil {
				t.Fatalf("expected an envelope, got %v", err)
			}
			if (want.ID != nil) != env.HasID || (want.ID != nil && *want.ID != env.ID) {
				t.Errorf("id %q (has %v), want %v", env.ID, env.HasID, want.ID)
			}
			if env.Type != want.Type || env.Encoding != want.Encoding {
				t.Errorf("type %q encoding %q, want %q %q", env.Type, env.Encoding, want.Type, want.Encoding)
			}
			switch {
			case want.Payload != nil:
				if env.Payload == nil {
					t.Fatalf("no JSON payload; bytes %x", env.Bytes)
				}
				if got, w := jsonValue(t, env.Payload), jsonValue(t, *want.Payload); !reflect.DeepEqual(got, w) {
					t.Errorf("payload %s, want %s", env.Payload, *want.Payload)
				}
			case want.BytesB64 != nil:
				if env.Payload != nil || !bytes.Equal(env.Bytes, wantBytes(t, *want.BytesB64)) {
					t.Errorf("bytes %x payload %s, want %s", env.Bytes, env.Payload, *want.BytesB64)
				}
			default:
				t.Fatal("the case has neither payload nor bytes_b64")
			}
		})
	}
}

func TestNumericIDsRenderLikeTheEngine(t *testing.T) {
	for in, want := range map[string]string{
		"7": "7", "-3": "-3", "1.5": "1.5", "1e3": "1000.0", "1E2": "100.0", "7.50": "7.5",
		"-0": "-0.0", "0.0001": "0.0001", "1e-7": "1e-7", "1.5e-7": "1.5e-7", "1e16": "1e16",
		"123456789012345678901": "1.2345678901234568e20", "18446744073709551615": "18446744073709551615",
		"1e15": "1000000000000000.0", "-9223372036854775808": "-9223372036854775808",
	} {
		if got := rustNumberString(in); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

func TestLoneSurrogates(t *testing.T) {
	for in, bad := range map[string]bool{
		`"\ud83d\ude00"`: false, `"\ud800"`: true, `"\udc00"`: true, `"\ud800\u0041"`: true,
		`"\\ud800"`: false, `"a\"\ud800"`: true, `"\u00e9"`: false,
	} {
		if got := loneSurrogateAt([]byte(in)) >= 0; got != bad {
			t.Errorf("%s: lone surrogate %v, want %v", in, got, bad)
		}
	}
}
