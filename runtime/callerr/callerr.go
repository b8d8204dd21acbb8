// Package callerr is the error every micro call answers with: JSON
// {"id","code","detail","status"} with an honest HTTP status.
package callerr

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Error is a call's failure as the caller sees it.
type Error struct {
	// ID names who answered, e.g. "micro.ingress" or the service name.
	ID string `json:"id"`
	// Code is the HTTP status code.
	Code int `json:"code"`
	// Detail says what went wrong, naming the bad input where there is one.
	Detail string `json:"detail"`
	// Status is the HTTP status text of Code.
	Status string `json:"status"`
	// RetryAfter, when set, is the Retry-After header of the answer, in seconds.
	RetryAfter string `json:"-"`
	// Unreached is set when the call provably reached no app: every attempt failed
	// before its request could be sent (no connection, a node that refused it).
	Unreached bool `json:"-"`
}

// StatusClientClosed is the status of a call whose caller went away before its answer
// (nginx's 499). No one reads the answer; metrics and logs count it apart from failures.
const StatusClientClosed = 499

// New returns an Error with the given code, its status text, and a formatted detail.
func New(id string, code int, format string, args ...any) *Error {
	return &Error{ID: id, Code: code, Detail: fmt.Sprintf(format, args...), Status: statusText(code)}
}

func statusText(code int) string {
	if code == StatusClientClosed {
		return "Client Closed Request"
	}
	return http.StatusText(code)
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.ID, e.Code, e.Status, e.Detail)
}

// JSON returns e encoded as JSON.
func (e *Error) JSON() []byte {
	b, _ := json.Marshal(e) // an Error of strings and an int always encodes
	return b
}

// Write sends e to w as a JSON response with e.Code as its status.
func (e *Error) Write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if e.RetryAfter != "" {
		w.Header().Set("Retry-After", e.RetryAfter)
	}
	w.WriteHeader(e.Code)
	_, _ = w.Write(append(e.JSON(), '\n'))
}

// Parse decodes body as an Error. It reports false when body is not one.
func Parse(body []byte) (*Error, bool) {
	var e Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code == 0 || e.ID == "" {
		return nil, false
	}
	return &e, true
}

// As returns err as an *Error if it is one (or wraps one), or a 500 Error describing it.
func As(id string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return New(id, http.StatusInternalServerError, "%v", err)
}
