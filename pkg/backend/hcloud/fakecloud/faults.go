package fakecloud

import (
	"math"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// Fault is an injected failure: the next Times API requests matching
// Method and Path are answered with Status instead of their real answer.
type Fault struct {
	// Method matches the request method; "" matches any.
	Method string
	// Path is a path.Match pattern for the API path after /v1, such as
	// "/volumes/*/actions/attach"; "" matches any.
	Path string
	// Status is the HTTP status: 429, 500, 502, 503, 504...
	Status int
	// Code and Message are the error's; by default they follow Status
	// (rate_limit_exceeded, server_error, bad_gateway, unavailable,
	// timeout).
	Code, Message string
	// RetryAfter is sent as the Retry-After header of a 429, and sets its
	// RateLimit-Reset.
	RetryAfter time.Duration
	// After lets the request take effect first: only its answer is lost,
	// as when a connection breaks after the API did the work.
	After bool
	// Times is how many requests the fault answers; 0 means one.
	Times int

	limit float64 // the budget a spent budget's 429 names
}

// Inject adds a fault. Faults match in the order they were added.
func (c *Cloud) Inject(f Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.Times <= 0 {
		f.Times = 1
	}
	c.faults = append(c.faults, &f)
}

// ClearFaults removes the faults and action failures not used up yet.
func (c *Cloud) ClearFaults() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = nil
	c.failActions = map[string][]schema.ActionError{}
}

// takeFault returns the first fault matching a request and uses it once.
// Callers hold c.mu.
func (c *Cloud) takeFault(method, apiPath string) *Fault {
	for i, f := range c.faults {
		if f.Method != "" && f.Method != method {
			continue
		}
		if f.Path != "" {
			if ok, err := path.Match(f.Path, apiPath); err != nil || !ok {
				continue
			}
		}
		f.Times--
		if f.Times == 0 {
			c.faults = append(c.faults[:i], c.faults[i+1:]...)
		}
		out := *f
		return &out
	}
	return nil
}

// write answers a request with the fault.
func (f *Fault) write(w http.ResponseWriter) {
	code, message := f.Code, f.Message
	defaultCode, defaultMessage := "server_error", "internal server error"
	switch f.Status {
	case http.StatusTooManyRequests:
		limit := RateLimit
		if f.limit > 0 {
			limit = int(f.limit)
		}
		defaultCode, defaultMessage = "rate_limit_exceeded", "limit of "+strconv.Itoa(limit)+" requests reached"
		secs := int(math.Ceil(f.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		if f.limit == 0 { // injected: a spent budget has its headers already
			w.Header().Set("RateLimit-Remaining", "0")
			w.Header().Set("RateLimit-Reset", strconv.FormatInt(time.Now().Add(f.RetryAfter).Unix(), 10))
		}
	case http.StatusBadGateway:
		defaultCode, defaultMessage = "bad_gateway", "bad gateway"
	case http.StatusServiceUnavailable:
		defaultCode, defaultMessage = "unavailable", "service unavailable"
	case http.StatusGatewayTimeout:
		defaultCode, defaultMessage = "timeout", "gateway timeout"
	}
	if code == "" {
		code = defaultCode
	}
	if message == "" {
		message = defaultMessage
	}
	writeError(w, &apiError{status: f.Status, code: code, message: message})
}
