package fakecloud

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// handler answers one API request: a status and a body to encode, or an
// error answer.
type handler func(r *http.Request) (int, any, *apiError)

func (c *Cloud) routes() http.Handler {
	mux := http.NewServeMux()
	api := func(method, path string, h handler) {
		mux.HandleFunc(method+" /v1"+path, c.serveAPI(method+" "+path, h))
	}
	api("GET", "/locations", c.listLocations)
	api("GET", "/locations/{id}", c.getLocation)
	api("GET", "/servers", c.listServers)
	api("GET", "/servers/{id}", c.getServer)
	api("GET", "/volumes", c.listVolumes)
	api("POST", "/volumes", c.createVolume)
	api("GET", "/volumes/{id}", c.getVolume)
	api("PUT", "/volumes/{id}", c.updateVolume)
	api("DELETE", "/volumes/{id}", c.deleteVolume)
	api("POST", "/volumes/{id}/actions/attach", c.attachVolume)
	api("POST", "/volumes/{id}/actions/detach", c.detachVolume)
	api("POST", "/volumes/{id}/actions/resize", c.resizeVolume)
	api("POST", "/volumes/{id}/actions/change_protection", c.changeProtection)
	api("GET", "/volumes/{id}/actions", c.listVolumeActions)
	api("GET", "/volumes/actions", c.listResourceActions("volume"))
	api("GET", "/servers/{id}/actions", c.listServerActions)
	api("GET", "/actions", c.listActions)
	api("GET", "/actions/{id}", c.getAction)
	mux.HandleFunc("/v1/", c.serveAPI("other", func(r *http.Request) (int, any, *apiError) {
		return 0, nil, notFound("route " + r.Method + " " + r.URL.Path)
	}))
	mux.HandleFunc("GET /metadata/{server}/{key}", c.serveMetadata)
	mux.HandleFunc("GET /fakecloud/requests", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, c.Requests())
	})
	return mux
}

// serveAPI wraps a handler with what every API request goes through:
// counting, rate-limit headers, injected faults and the token check.
func (c *Cloud) serveAPI(route string, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Correlation-Id", correlationID())
		c.mu.Lock()
		c.total++
		c.requests[route]++
		now := time.Now()
		limited := !c.rate.take(now) && c.opts.EnforceRateLimit
		if limited {
			c.limited++
		}
		wait := c.rate.untilToken(now)
		c.rate.headers(w.Header(), now)
		f := c.takeFault(r.Method, strings.TrimPrefix(r.URL.Path, "/v1"))
		token := c.opts.Token
		c.mu.Unlock()

		if limited {
			f = &Fault{Status: http.StatusTooManyRequests, RetryAfter: wait, limit: c.rate.limit}
		}
		if f != nil && !f.After {
			f.write(w)
			return
		}
		if !authorized(r, token) {
			writeError(w, &apiError{status: http.StatusUnauthorized, code: "unauthorized", message: "unable to authenticate"})
			return
		}
		status, body, apiErr := h(r)
		switch {
		case f != nil:
			f.write(w) // the request took effect; its answer is lost
		case apiErr != nil:
			writeError(w, apiErr)
		default:
			writeJSON(w, status, body)
		}
	}
}

func authorized(r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || got == "" {
		return false
	}
	return token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// decode reads a JSON request body into v.
func decode(r *http.Request, v any) *apiError {
	data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return &apiError{status: http.StatusBadRequest, code: "json_error", message: "cannot read the request body"}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return &apiError{status: http.StatusBadRequest, code: "json_error", message: "invalid JSON in the request body: " + err.Error()}
	}
	return nil
}

// pathID parses the {name} path value as a resource id.
func pathID(r *http.Request, name, what string) (int64, *apiError) {
	id, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	if err != nil || id <= 0 {
		return 0, notFound(what)
	}
	return id, nil
}

// rateBucket is the API's request budget: limit requests, refilled at
// one per per.
type rateBucket struct {
	limit  float64
	per    time.Duration
	tokens float64
	at     time.Time
}

func newRateBucket(limit int, per time.Duration) rateBucket {
	if limit <= 0 {
		limit = RateLimit
	}
	if per <= 0 {
		per = RateRefill
	}
	return rateBucket{limit: float64(limit), per: per, tokens: float64(limit), at: time.Now()}
}

func (b *rateBucket) refill(now time.Time) {
	b.tokens = min(b.limit, b.tokens+float64(now.Sub(b.at))/float64(b.per))
	b.at = now
}

// take spends one request of the budget, reporting whether there was one.
func (b *rateBucket) take(now time.Time) bool {
	b.refill(now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (b *rateBucket) untilToken(now time.Time) time.Duration {
	b.refill(now)
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(b.per))
}

// headers sets the RateLimit headers the real API sends with every answer.
func (b *rateBucket) headers(h http.Header, now time.Time) {
	h.Set("RateLimit-Limit", strconv.Itoa(int(b.limit)))
	h.Set("RateLimit-Remaining", strconv.Itoa(int(b.tokens)))
	full := now.Add(time.Duration((b.limit - b.tokens) * float64(b.per)))
	h.Set("RateLimit-Reset", strconv.FormatInt(full.Unix(), 10))
}
