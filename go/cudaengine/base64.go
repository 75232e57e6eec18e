package cudaengine

import (
	"fmt"
	"strconv"
)

const invalidMorsel = 0xff

func decodeTable(alphabet string) *[256]byte {
	var t [256]byte
	for i := range t {
		t[i] = invalidMorsel
	}
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return &t
}

var (
	stdTable = decodeTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
	urlTable = decodeTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
)

// base64Failure is a decoding error at an offset of the compact text.
type base64Failure struct {
	kind   int // failInvalidByte, failLastSymbol, failLength
	offset int
	b      byte
}

const (
	failInvalidByte = iota
	failLastSymbol
	failLength
)

// DecodeBase64 decodes base64 with the engine's rules: the standard (+/) or
// URL-safe (-_) alphabet, chosen from the characters present (mixing both
// is an error); padding optional; ASCII whitespace anywhere ignored; no
// non-zero trailing bits. Errors are E_BAD_BASE64 naming the field and the
// offset in the original text (before whitespace removal). An empty string
// is zero bytes.
func DecodeBase64(text, field string) ([]byte, error) {
	raw := []byte(text)
	hasSpace := false
	for _, c := range raw {
		if isASCIISpace(c) {
			hasSpace = true
			break
		}
	}
	compact := raw
	if hasSpace {
		compact = make([]byte, 0, len(raw))
		for _, c := range raw {
			if !isASCIISpace(c) {
				compact = append(compact, c)
			}
		}
	}
	stdAt, urlAt := -1, -1
	for i, c := range compact {
		if stdAt < 0 && (c == '+' || c == '/') {
			stdAt = i
		}
		if urlAt < 0 && (c == '-' || c == '_') {
			urlAt = i
		}
	}
	table := stdTable
	switch {
	case stdAt >= 0 && urlAt >= 0:
		at := stdAt
		if urlAt > at {
			at = urlAt
		}
		return nil, newError(CodeBadBase64, "`%s` mixes the standard (+/) and URL-safe (-_) base64 alphabets at offset %d",
			field, originalOffset(raw, at, hasSpace))
	case urlAt >= 0:
		table = urlTable
	}
	out, f := decodeBase64Compact(compact, table)
	if f == nil {
		return out, nil
	}
	at := originalOffset(raw, f.offset, hasSpace)
	switch {
	case f.kind == failLength:
		return nil, newError(CodeBadBase64, "`%s` is not valid base64: %d data characters is not a valid length (one character too many or too few)", field, f.offset)
	case f.kind == failLastSymbol:
		return nil, newError(CodeBadBase64, "`%s` is not valid base64: last character %s has non-zero trailing bits at offset %d", field, rustChar(f.b), at)
	case f.b == '=':
		return nil, newError(CodeBadBase64, "`%s` is not valid base64: padding '=' in the middle of the data at offset %d", field, at)
	default:
		return nil, newError(CodeBadBase64, "`%s` is not valid base64: invalid character %s at offset %d", field, rustChar(f.b), at)
	}
}

// decodeBase64Compact follows the algorithm of the Rust base64 crate
// (0.22, GeneralPurpose, padding indifferent, no trailing bits) step by
// step, so that both languages report the same error at the same offset.
func decodeBase64Compact(in []byte, table *[256]byte) ([]byte, *base64Failure) {
	n := len(in)
	rem := n % 4
	// A trailing invalid byte (like a newline) is reported first.
	if rem == 1 {
		last := in[n-1]
		if last != '=' && table[last] == invalidMorsel {
			return nil, &base64Failure{failInvalidByte, n - 1, last}
		}
	}
	// Every complete quad except the last one, which may carry padding.
	quads := n - rem
	if rem == 0 {
		quads -= 4
	}
	if quads < 0 {
		quads = 0
	}
	out := make([]byte, 0, (n+3)/4*3)
	for i := 0; i < quads; i += 4 {
		var acc uint32
		for j := 0; j < 4; j++ {
			c := in[i+j]
			m := table[c]
			if m == invalidMorsel {
				return nil, &base64Failure{failInvalidByte, i + j, c}
			}
			acc = acc<<6 | uint32(m)
		}
		out = append(out, byte(acc>>16), byte(acc>>8), byte(acc))
	}
	// The suffix: up to 4 bytes, with optional padding.
	var morsels [4]byte
	count, padding, firstPad := 0, 0, 0
	var lastSymbol byte
	for k, c := range in[quads:] {
		if c == '=' {
			if k < 2 {
				return nil, &base64Failure{failInvalidByte, quads + k, c}
			}
			if padding == 0 {
				firstPad = k
			}
			padding++
			continue
		}
		if padding > 0 {
			return nil, &base64Failure{failInvalidByte, quads + firstPad, '='}
		}
		lastSymbol = c
		m := table[c]
		if m == invalidMorsel {
			return nil, &base64Failure{failInvalidByte, quads + k, c}
		}
		morsels[count] = m
		count++
	}
	if n > 0 && count < 2 {
		return nil, &base64Failure{kind: failLength, offset: quads + count}
	}
	if count == 0 {
		return out, nil
	}
	keep := count * 6 / 8
	num := uint32(morsels[0])<<26 | uint32(morsels[1])<<20 | uint32(morsels[2])<<14 | uint32(morsels[3])<<8
	mask := ^uint32(0) >> (keep * 8)
	if num&mask != 0 {
		return nil, &base64Failure{failLastSymbol, quads + count - 1, lastSymbol}
	}
	for i := 0; i < keep; i++ {
		out = append(out, byte(num>>(24-8*i)))
	}
	return out, nil
}

// originalOffset maps an offset in the whitespace-free text back to the
// original text.
func originalOffset(raw []byte, compactOffset int, hasSpace bool) int {
	if !hasSpace {
		return compactOffset
	}
	seen := 0
	for i, c := range raw {
		if isASCIISpace(c) {
			continue
		}
		if seen == compactOffset {
			return i
		}
		seen++
	}
	return len(raw)
}

// rustChar quotes a byte the way the engine's messages do ('$').
func rustChar(b byte) string {
	r := rune(b) // the byte as a Latin-1 character, as in Rust's `b as char`
	if strconv.IsPrint(r) {
		if r == '\'' || r == '\\' {
			return `'\` + string(r) + `'`
		}
		return "'" + string(r) + "'"
	}
	return fmt.Sprintf(`'\u{%x}'`, b)
}
