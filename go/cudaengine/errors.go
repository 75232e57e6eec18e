package cudaengine

import (
	"context"
	"errors"
	"fmt"
)

// Code is one of the engine's stable error codes ("E_WORKER_TIMEOUT", ...).
// The constants (CodeWorkerTimeout, ...) are generated from
// docs/error-codes.json; the string form is the public contract.
type Code string

// CodeInfo is one row of the engine's error table.
type CodeInfo struct {
	Code       Code
	HTTPStatus int
	Meaning    string
}

// Codes returns the whole table, in the engine's order.
func Codes() []CodeInfo {
	return append([]CodeInfo(nil), codeTable...)
}

// LookupCode finds a code in the table.
func LookupCode(code string) (CodeInfo, bool) {
	for _, c := range codeTable {
		if string(c.Code) == code {
			return c, true
		}
	}
	return CodeInfo{}, false
}

// HTTPStatus is the status the engine's HTTP service answers with for the
// code (500 for a code not in the table).
func (c Code) HTTPStatus() int {
	if info, ok := LookupCode(string(c)); ok {
		return info.HTTPStatus
	}
	return 500
}

// Error is a failure with one of the engine's codes and a message naming
// what is at fault. Err, when set, is the underlying cause (errors.Is and
// errors.As see it through Unwrap).
type Error struct {
	Code    Code
	Message string
	Err     error
	// Status is the HTTP status a service answered with (Client errors
	// only; 0 otherwise). A service may use a few codes of its own
	// (E_UNAUTHORIZED, ...), or none for a non-JSON answer (Code "").
	Status int
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return string(e.Code) + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// HTTPStatus is Status when the error came from a service, else the
// status the engine's table gives the code.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	return e.Code.HTTPStatus()
}

// CodeOf returns the engine code carried by err (through wrapping), or ""
// when err is nil or carries none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func newError(code Code, format string, args ...interface{}) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func wrapError(code Code, cause error, format string, args ...interface{}) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: cause}
}

// contextError turns a finished context into the engine's code: a
// cancellation is E_CANCELLED, a passed deadline is `deadline` (the caller
// picks E_WORKER_TIMEOUT or E_TIMEOUT). The context's error is the cause.
func contextError(ctx context.Context, deadline Code, what string) *Error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return wrapError(deadline, err, "%s: the context's deadline passed", what)
	}
	return wrapError(CodeCancelled, err, "%s: the call was cancelled by its context", what)
}
