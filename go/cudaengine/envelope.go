package cudaengine

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits applied while decoding an envelope (docs/envelope.md).
type Limits struct {
	// MaxEnvelopeBytes is the largest envelope (and `payload_b64`) accepted.
	MaxEnvelopeBytes int
	// MaxJSONDepth is the deepest JSON nesting accepted (arrays + objects).
	MaxJSONDepth int
}

// DefaultLimits are the engine's defaults: 16 MiB, 64 levels.
func DefaultLimits() Limits {
	return Limits{MaxEnvelopeBytes: 16 << 20, MaxJSONDepth: 64}
}

// Payload encodings (the envelope's `encoding` field).
const (
	EncodingJSON    = "json"
	EncodingRaw     = "raw"
	EncodingCBOR    = "cbor"
	EncodingMsgPack = "msgpack"
)

// Envelope is a decoded, validated envelope.
type Envelope struct {
	// ID is the envelope's `id` (a number is kept as its decimal string, as
	// the engine echoes it); HasID says whether one was given.
	ID    string
	HasID bool
	// Type is the `type` field as given (the engine resolves the aliases
	// embed -> embedding, infer -> inference).
	Type string
	// Encoding is "json" for a JSON payload; "raw", "cbor" or "msgpack" for
	// bytes.
	Encoding string
	// Payload is the JSON text of the payload when Encoding is "json".
	Payload json.RawMessage
	// Bytes holds the payload bytes otherwise. CBOR and MessagePack bytes
	// are kept undecoded: this package has no codec for them (the engine
	// decodes and checks them when the envelope reaches it).
	Bytes []byte
}

// Value decodes a JSON payload (numbers as json.Number).
func (e *Envelope) Value() (interface{}, error) {
	if e.Encoding != EncodingJSON {
		return nil, newError(CodeInvalidArg, "the payload is %s bytes, not JSON", e.Encoding)
	}
	dec := json.NewDecoder(bytes.NewReader(e.Payload))
	dec.UseNumber()
	var v interface{}
	err := dec.Decode(&v)
	return v, err
}

// DecodeEnvelope decodes an envelope given as JSON text (an HTTP body, a
// worker line) with the engine's rules: the size limit first, the depth
// limit before parsing, exactly one of `payload` / `payload_b64`, base64 in
// either alphabet, and sniffing of JSON vs raw bytes.
func DecodeEnvelope(data []byte, limits Limits) (*Envelope, error) {
	if len(data) > limits.MaxEnvelopeBytes {
		return nil, tooLarge("envelope", len(data), limits)
	}
	if err := ValidateJSON(data, limits, "envelope"); err != nil {
		return nil, err
	}
	trimmed := trimASCIISpace(data)
	if jsonKind(trimmed) != "an object" {
		return nil, newError(CodeEnvelope, "the envelope must be a JSON object with `type` and `payload` or `payload_b64`, got %s", jsonKind(trimmed))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &obj); err != nil {
		return nil, wrapError(CodeBadJSON, err, "`envelope` is not valid JSON: %v", err)
	}
	raw, err := rawEnvelopeFrom(obj)
	if err != nil {
		return nil, err
	}
	return raw.decode(limits)
}

type rawEnvelope struct {
	id, jobType, payloadB64, encoding          string
	hasID, hasType, hasPayloadB64, hasEncoding bool
	payload                                    json.RawMessage
}

// field returns a member that is present and not null.
func field(obj map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	v, ok := obj[name]
	if !ok || jsonKind(v) == "null" {
		return nil, false
	}
	return v, true
}

func rawEnvelopeFrom(obj map[string]json.RawMessage) (*rawEnvelope, error) {
	r := &rawEnvelope{}
	str := func(v json.RawMessage) string {
		var s string
		_ = json.Unmarshal(v, &s) // validated above
		return s
	}
	if v, ok := field(obj, "id"); ok {
		switch jsonKind(v) {
		case "a string":
			r.id = str(v)
		case "a number":
			r.id = rustNumberString(string(v))
		default:
			return nil, newError(CodeEnvelope, "`id` must be a string or a number, got %s", jsonKind(v))
		}
		r.hasID = true
	}
	if v, ok := field(obj, "type"); ok {
		if jsonKind(v) != "a string" {
			return nil, newError(CodeEnvelope, "`type` must be a string, got %s", jsonKind(v))
		}
		r.jobType, r.hasType = str(v), true
	}
	if v, ok := field(obj, "payload"); ok {
		r.payload = v
	}
	if v, ok := field(obj, "payload_b64"); ok {
		if jsonKind(v) != "a string" {
			return nil, newError(CodeEnvelope, "`payload_b64` must be a base64 string, got %s", jsonKind(v))
		}
		r.payloadB64, r.hasPayloadB64 = str(v), true
	}
	if v, ok := field(obj, "encoding"); ok {
		if jsonKind(v) != "a string" {
			return nil, newError(CodeEnvelope, "`encoding` must be a string, got %s", jsonKind(v))
		}
		r.encoding, r.hasEncoding = str(v), true
	}
	return r, nil
}

func validEncoding(s string) bool {
	switch s {
	case EncodingJSON, EncodingRaw, EncodingCBOR, EncodingMsgPack:
		return true
	}
	return false
}

func (r *rawEnvelope) decode(limits Limits) (*Envelope, error) {
	if !r.hasType {
		return nil, newError(CodeEnvelope, "`type` is missing: name the job type (e.g. \"embedding\", \"echo\")")
	}
	if strings.TrimSpace(r.jobType) == "" {
		return nil, newError(CodeEnvelope, "`type` is empty: name the job type (e.g. \"embedding\", \"echo\")")
	}
	if r.hasEncoding && !validEncoding(r.encoding) {
		return nil, newError(CodeEnvelope, "`encoding` must be one of json, raw, cbor, msgpack; got %s", strconv.Quote(r.encoding))
	}
	env := &Envelope{ID: r.id, HasID: r.hasID, Type: r.jobType}
	switch {
	case r.payload != nil && r.hasPayloadB64:
		return nil, newError(CodeEnvelope, "the envelope has both `payload` and `payload_b64`: send exactly one")
	case r.payload == nil && !r.hasPayloadB64:
		return nil, newError(CodeEnvelope, "the envelope has neither `payload` nor `payload_b64`: send exactly one")
	case r.payload != nil:
		if r.hasEncoding && r.encoding != EncodingJSON {
			return nil, newError(CodeEnvelope, "`encoding: %s` applies to `payload_b64` only; `payload` is always JSON", r.encoding)
		}
		if d := JSONDepth(r.payload); d > limits.MaxJSONDepth {
			return nil, tooDeep("payload", d, limits)
		}
		env.Payload, env.Encoding = r.payload, EncodingJSON
		return env, nil
	}
	// Base64 is 4/3 of the bytes it carries: this bounds the decoded size
	// before a single byte is decoded.
	if len(r.payloadB64) > limits.MaxEnvelopeBytes {
		return nil, tooLarge("payload_b64", len(r.payloadB64), limits)
	}
	b, err := DecodeBase64(r.payloadB64, "payload_b64")
	if err != nil {
		return nil, err
	}
	enc := ""
	if r.hasEncoding {
		enc = r.encoding
	}
	if err := decodePayloadBytes(env, b, enc, limits, "payload_b64"); err != nil {
		return nil, err
	}
	return env, nil
}

// decodePayloadBytes honours `encoding`, or when it is empty sniffs: bytes
// that parse as JSON are JSON, others are raw.
func decodePayloadBytes(env *Envelope, b []byte, encoding string, limits Limits, field string) error {
	switch encoding {
	case EncodingJSON:
		if err := ValidateJSON(b, limits, field); err != nil {
			return err
		}
		env.Payload, env.Encoding = json.RawMessage(trimASCIISpace(b)), EncodingJSON
	case EncodingRaw, EncodingCBOR, EncodingMsgPack:
		env.Bytes, env.Encoding = b, encoding
	default:
		if looksLikeJSON(b) {
			err := ValidateJSON(b, limits, field)
			if err == nil {
				env.Payload, env.Encoding = json.RawMessage(trimASCIISpace(b)), EncodingJSON
				return nil
			}
			// JSON-shaped but too deep is an attack or a bug, not raw bytes.
			if CodeOf(err) == CodeTooDeep {
				return err
			}
		}
		env.Bytes, env.Encoding = b, EncodingRaw
	}
	return nil
}

// isASCIISpace is Rust's u8::is_ascii_whitespace: space, \t, \n, \f, \r
// (not \v).
func isASCIISpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\f' || b == '\r'
}

func trimASCIISpace(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isASCIISpace(b[i]) {
		i++
	}
	for j > i && isASCIISpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

// looksLikeJSON: valid UTF-8 whose first non-whitespace byte can start a
// JSON value.
func looksLikeJSON(b []byte) bool {
	t := trimASCIISpace(b)
	if len(t) == 0 {
		return false
	}
	switch c := t[0]; {
	case c == '{' || c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n':
		return utf8.Valid(b)
	}
	return false
}

// jsonKind names the kind of a (valid) JSON text by its first byte, the way
// the engine's messages do.
func jsonKind(v []byte) string {
	t := trimASCIISpace(v)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '[':
		return "an array"
	case '{':
		return "an object"
	}
	return "a number"
}

func tooDeep(field string, depth int, limits Limits) *Error {
	return newError(CodeTooDeep, "`%s` is nested %d levels deep; the limit is %d", field, depth, limits.MaxJSONDepth)
}

func tooLarge(field string, n int, limits Limits) *Error {
	return newError(CodeTooLarge, "`%s` is %d bytes; the limit is %d bytes (EngineOptions.maxEnvelopeBytes)", field, n, limits.MaxEnvelopeBytes)
}

// DepthExceededAt returns the byte offset at which JSON text first nests
// deeper than max (brackets outside strings), or -1. Linear, no recursion.
func DepthExceededAt(b []byte, max int) int {
	depth := 0
	inString, escaped := false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return i
			}
		case '}', ']':
			if depth > 0 {
				depth--
			}
		}
	}
	return -1
}

// JSONDepth is the nesting depth of JSON text (a scalar is 0, [] is 1).
func JSONDepth(b []byte) int {
	depth, max := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				max = depth
			}
		case '}', ']':
			if depth > 0 {
				depth--
			}
		}
	}
	return max
}

// ValidateJSON checks JSON text the way the engine parses it: the depth
// limit first (before any parsing), then strict JSON: valid UTF-8, numbers
// within float64 range, nothing after the value. A lone UTF-16 surrogate
// escape is accepted and decodes to U+FFFD, as in the engine (Go's decoder
// does that itself). Failures are E_TOO_DEEP or E_BAD_JSON (with line and column).
func ValidateJSON(b []byte, limits Limits, field string) error {
	if off := DepthExceededAt(b, limits.MaxJSONDepth); off >= 0 {
		return newError(CodeTooDeep, "`%s` is nested deeper than %d levels (at byte offset %d)", field, limits.MaxJSONDepth, off)
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, n := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		line, col := lineColumn(b, off)
		return newError(CodeBadJSON, "`%s` is not valid JSON: invalid UTF-8 at line %d column %d", field, line, col)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v interface{}
	err := dec.Decode(&v)
	if err == nil {
		// One value only: anything but whitespace after it is an error.
		rest := trimASCIISpace(b[dec.InputOffset():])
		if len(rest) > 0 {
			line, col := lineColumn(b, int(dec.InputOffset())+bytes.Index(b[dec.InputOffset():], rest[:1]))
			return newError(CodeBadJSON, "`%s` is not valid JSON: trailing characters at line %d column %d", field, line, col)
		}
	}
	if err != nil {
		off := len(b)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			off = int(se.Offset)
		}
		line, col := lineColumn(b, off)
		msg := err.Error()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			msg = "EOF while parsing a value"
		}
		return wrapError(CodeBadJSON, err, "`%s` is not valid JSON: %s at line %d column %d", field, msg, line, col)
	}
	if bad := numberOutOfRange(v); bad != "" {
		return newError(CodeBadJSON, "`%s` is not valid JSON: number out of range: %s", field, bad)
	}
	return nil
}

// lineColumn converts a byte offset to 1-based line and column.
func lineColumn(b []byte, off int) (int, int) {
	if off > len(b) {
		off = len(b)
	}
	line, col := 1, 1
	for _, c := range b[:off] {
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// loneSurrogateAt finds a \uD800-\uDFFF escape that is not a valid pair
// (both Go's decoder and the engine turn it into U+FFFD; kept for callers
// that want to know).
func loneSurrogateAt(b []byte) int {
	inString := false
	hex := func(i int) (int, bool) {
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16)
		return int(n), err == nil
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			u, ok := hex(i)
			if !ok {
				i++ // skip the escaped byte
				continue
			}
			switch {
			case u >= 0xD800 && u <= 0xDBFF:
				lo, ok := hex(i + 6)
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return i
				}
				i += 11
			case u >= 0xDC00 && u <= 0xDFFF:
				return i
			default:
				i += 5
			}
		}
	}
	return -1
}

func numberOutOfRange(v interface{}) string {
	stack := []interface{}{v}
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch t := x.(type) {
		case json.Number:
			if f, err := strconv.ParseFloat(string(t), 64); err != nil && math.IsInf(f, 0) {
				return string(t)
			}
		case []interface{}:
			stack = append(stack, t...)
		case map[string]interface{}:
			for _, e := range t {
				stack = append(stack, e)
			}
		}
	}
	return ""
}

// rustNumberString renders a JSON number the way the engine echoes a
// numeric `id`: integers as written in decimal, other numbers as the
// shortest float64 text (1.5, 1000.0, 1e20).
func rustNumberString(text string) string {
	if !strings.ContainsAny(text, ".eE") {
		if u, err := strconv.ParseUint(text, 10, 64); err == nil {
			return strconv.FormatUint(u, 10)
		}
		if i, err := strconv.ParseInt(text, 10, 64); err == nil && !(i == 0 && strings.HasPrefix(text, "-")) {
			return strconv.FormatInt(i, 10)
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return text
	}
	return ryuString(f)
}

// ryuString formats a finite float64 like Rust's ryu crate (which
// serde_json uses): shortest digits; plain decimal with ".0" for integral
// values up to 16 digits; scientific ("1e20", "1.5e-7") otherwise.
func ryuString(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, expText, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expText)
	digits := strings.Replace(mant, ".", "", 1)
	n := len(digits)
	k := exp - (n - 1) // value = digits * 10^k
	kk := exp + 1      // 10^(kk-1) <= value < 10^kk
	switch {
	case 0 <= k && kk <= 16:
		return sign + digits + strings.Repeat("0", k) + ".0"
	case 0 < kk && kk <= 16:
		return sign + digits[:kk] + "." + digits[kk:]
	case -5 < kk && kk <= 0:
		return sign + "0." + strings.Repeat("0", -kk) + digits
	case n == 1:
		return sign + digits + "e" + strconv.Itoa(kk-1)
	default:
		return sign + digits[:1] + "." + digits[1:] + "e" + strconv.Itoa(kk-1)
	}
}
