package quota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
)

// Request asks for leases: it is the JSON body of a call to the lease endpoint, e.g.
//
//	{"client":"node-1","resources":[{"name":"api","wants":120.5,"has":100}]}
//
// Fields a newer client may add are ignored, so that versions can be mixed while they roll.
type Request struct {
	// Client identifies the asking micro, the same in every request it sends.
	Client string `json:"client"`
	// Resources lists what the client asks for, each resource at most once.
	Resources []ResourceRequest `json:"resources"`
}

// ResourceRequest asks for a share of one resource.
type ResourceRequest struct {
	// Name is the resource's name.
	Name string `json:"name"`
	// Wants is the rate the client would use, in calls per second. 0 gives the lease back.
	Wants float64 `json:"wants"`
	// Has is the rate the client holds now under an unexpired lease (from any master), or 0.
	Has float64 `json:"has"`
}

// Response answers a Request, one Grant per requested resource, in the request's order.
type Response struct {
	Resources []Grant `json:"resources"`
}

// Grant is the answer about one resource. Durations are relative, as the hosts' clocks
// are not in sync: a client counts them from when it sent its request.
type Grant struct {
	// Name is the resource's name.
	Name string `json:"name"`
	// Rate is the granted share, in calls per second.
	Rate float64 `json:"rate"`
	// LeaseMS is how long the grant holds, in milliseconds.
	LeaseMS int64 `json:"lease_ms"`
	// RefreshMS is when to ask again, in milliseconds.
	RefreshMS int64 `json:"refresh_ms"`
	// Code, when not 0, says the resource was refused: 404 for a resource the server does
	// not know, 503 for one that has as many clients as it may hold. Rate is then 0 and
	// no lease is held.
	Code int `json:"code,omitempty"`
	// Error explains a refusal.
	Error string `json:"error,omitempty"`
}

// Refusal is the body of every answer of the lease endpoint other than 200: micro's error
// shape {"id","code","detail","status"} (runtime/callerr can parse it), and where to ask
// instead.
type Refusal struct {
	// ID is the ID constant.
	ID string `json:"id"`
	// Code is the answer's HTTP status: 307, 400, 404 or 503.
	Code int `json:"code"`
	// Detail says what went wrong; for a 400 it names the bad field.
	Detail string `json:"detail"`
	// Status is the HTTP status text of Code.
	Status string `json:"status"`
	// Node and Address name the master, with a 307: ask it instead.
	Node    string `json:"node,omitempty"`
	Address string `json:"address,omitempty"`
	// RetryAfterMS, with a 503, is how long to wait before asking again, in milliseconds.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}

// newRefusal returns the JSON of a Refusal.
func newRefusal(code int, detail string, edit func(*Refusal)) []byte {
	r := Refusal{ID: ID, Code: code, Detail: detail, Status: http.StatusText(code)}
	if edit != nil {
		edit(&r)
	}
	b, _ := json.Marshal(r) // strings and integers always encode
	return b
}

// ErrBadRequest is wrapped by every error of DecodeRequest and Request.Validate.
var ErrBadRequest = errors.New("bad lease request")

// badRequest returns an error that wraps ErrBadRequest and names field.
func badRequest(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBadRequest, field, fmt.Sprintf(format, args...))
}

// DecodeRequest reads and validates the body of a call to the lease endpoint. Its errors
// wrap ErrBadRequest and name the bad field.
func DecodeRequest(body []byte) (*Request, error) {
	if len(body) > MaxRequestBytes {
		return nil, badRequest("body", "%d bytes, at most %d", len(body), MaxRequestBytes)
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest("body", "%v", jsonError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("body", "data after the JSON object")
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

// jsonError describes a decoding error, naming the field when encoding/json knows it.
func jsonError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %s: a JSON %s is not a %v", te.Field, te.Value, te.Type)
	}
	if errors.Is(err, io.EOF) {
		return "empty: want a JSON object"
	}
	return err.Error()
}

// Validate checks r against the protocol's bounds: a valid client ID, 1 to MaxResources
// resources with valid, distinct names, and wants and has finite, in [0, MaxRate]. Its
// errors wrap ErrBadRequest and name the bad field.
func (r *Request) Validate() error {
	if r == nil {
		return badRequest("body", "no request")
	}
	if err := checkName(r.Client); err != nil {
		return badRequest("client", "%v", err)
	}
	switch n := len(r.Resources); {
	case n == 0:
		return badRequest("resources", "empty: name at least one resource")
	case n > MaxResources:
		return badRequest("resources", "%d entries, at most %d", n, MaxResources)
	}
	seen := make(map[string]int, len(r.Resources))
	for i, rr := range r.Resources {
		if err := checkName(rr.Name); err != nil {
			return badRequest(fmt.Sprintf("resources[%d].name", i), "%v", err)
		}
		if first, ok := seen[rr.Name]; ok {
			return badRequest(fmt.Sprintf("resources[%d].name", i), "%q repeats resources[%d]", rr.Name, first)
		}
		seen[rr.Name] = i
		if err := checkRate(rr.Wants); err != nil {
			return badRequest(fmt.Sprintf("resources[%d].wants", i), "%v", err)
		}
		if err := checkRate(rr.Has); err != nil {
			return badRequest(fmt.Sprintf("resources[%d].has", i), "%v", err)
		}
	}
	return nil
}

// checkName explains why s is not a valid name, or returns nil.
func checkName(s string) error {
	if validName(s) {
		return nil
	}
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("%d bytes, at most %d", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !validName(s[i : i+1]) {
			return fmt.Errorf("byte %d (%q) is not one of [A-Za-z0-9._-]", i, s[i])
		}
	}
	return errors.New("invalid") // not reached
}

// checkRate explains why v is not a valid rate, or returns nil.
func checkRate(v float64) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Errorf("%v is not finite", v)
	case v < 0:
		return fmt.Errorf("%v is negative", v)
	case v > MaxRate:
		return fmt.Errorf("%v exceeds %v", v, float64(MaxRate))
	}
	return nil
}

// decodeResponse reads an answer of the lease endpoint with status 200, checking it as a
// request is checked: it comes over the network too.
func decodeResponse(body []byte) (*Response, error) {
	if len(body) > MaxAnswerBytes {
		return nil, fmt.Errorf("lease answer: %d bytes, at most %d", len(body), MaxAnswerBytes)
	}
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("lease answer: %s", jsonError(err))
	}
	if n := len(resp.Resources); n > MaxResources {
		return nil, fmt.Errorf("lease answer: %d resources, at most %d", n, MaxResources)
	}
	for i, g := range resp.Resources {
		if err := checkRate(g.Rate); err != nil {
			return nil, fmt.Errorf("lease answer: resources[%d].rate: %v", i, err)
		}
		if g.LeaseMS < 0 || g.RefreshMS < 0 {
			return nil, fmt.Errorf("lease answer: resources[%d]: negative lease_ms or refresh_ms", i)
		}
	}
	return &resp, nil
}

// decodeRefusal reads the body of an answer other than 200; it returns the zero Refusal
// when body is not one.
func decodeRefusal(body []byte) Refusal {
	var r Refusal
	if len(body) <= MaxAnswerBytes {
		_ = json.Unmarshal(body, &r)
	}
	return r
}
