// Package fakecloud is a stateful fake of the Hetzner Cloud API: the
// volumes, servers, actions and locations the hcloud backend uses, with
// label selectors and pagination, spoken with hcloud-go's own schema types
// so that requests and responses have the real shapes.
//
// Attaching a volume gives the server a real block device: the volume's
// sparse image file on a loop device, linked from the server's by-id
// directory as /dev/disk/by-id/scsi-0HC_Volume_<id> is on a real server.
// Actions finish asynchronously after a configurable delay, and lock their
// resources meanwhile (a second action on them answers "locked", as the
// real API does). Failures can be injected: 429s with Retry-After and
// RateLimit headers, 5xx answers (before or after the request took
// effect), slow actions and failing actions.
//
// The fake listens on 127.0.0.1 only. Loop devices need root; with
// Options.NoDevices the by-id link points at the image file instead.
package fakecloud

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/swarm-csi/swarm-csi/pkg/loopdev"
)

// Limits of Hetzner Cloud volumes that the fake enforces.
const (
	// MaxVolumesPerServer is how many volumes one server takes.
	MaxVolumesPerServer = 16
	// MinVolumeGiB and MaxVolumeGiB bound a volume's size.
	MinVolumeGiB = 10
	MaxVolumeGiB = 10240
	// DevicePrefix starts the name of a volume's link in a server's by-id
	// directory; the volume id follows.
	DevicePrefix = "scsi-0HC_Volume_"
	// RateLimit is the API's budget of requests per hour; it refills at
	// one request per second.
	RateLimit = 3600
	// RateRefill is how long the budget takes to refill by one request.
	RateRefill = time.Second
)

// Options configure a fake cloud.
type Options struct {
	// Dir holds the volumes' image files and each server's by-id
	// directory. Whatever a previous fake left there is removed.
	Dir string
	// Token is the API token the fake accepts. Empty accepts any.
	Token string
	// ActionDelay is how long an action runs before it finishes.
	ActionDelay time.Duration
	// Port is the TCP port on 127.0.0.1 (0 picks a free one).
	Port int
	// NoDevices makes an attach link the image file itself rather than a
	// loop device on it: for tests that run without root.
	NoDevices bool
	// EnforceRateLimit answers 429 once the hourly budget is spent, as
	// the real API does. Without it the RateLimit headers are still sent.
	EnforceRateLimit bool
	// RateLimit and RateRefill replace the budget (default RateLimit
	// requests) and its refill (default one request per RateRefill), so
	// that a test spends it quickly.
	RateLimit  int
	RateRefill time.Duration
}

// Cloud is a running fake Hetzner Cloud API.
type Cloud struct {
	opts    Options
	dir     string
	tag     string // this cloud's part of its loop devices' tags
	devices *loopdev.Devices
	ln      net.Listener
	srv     *http.Server
	done    chan error

	mu          sync.Mutex
	seq         map[string]int64
	locations   []schema.Location
	servers     map[int64]*server
	volumes     map[int64]*volume
	actions     map[int64]*action
	busy        map[resource]*action
	delays      map[string]time.Duration
	failActions map[string][]schema.ActionError
	faults      []*Fault
	requests    map[string]int
	total       int
	limited     int
	rate        rateBucket
	closed      bool
	pending     sync.WaitGroup
}

// Start runs a fake cloud with the given options.
func Start(opts Options) (*Cloud, error) {
	if opts.Dir == "" {
		return nil, errors.New("fakecloud: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil { // loop devices report real paths
		return nil, err
	}
	sum := sha256.Sum256([]byte(dir))
	c := &Cloud{
		opts:        opts,
		dir:         dir,
		tag:         hex.EncodeToString(sum[:6]),
		devices:     loopdev.New(),
		done:        make(chan error, 1),
		seq:         map[string]int64{"server": 1000, "volume": 100000, "action": 0},
		locations:   defaultLocations(),
		servers:     map[int64]*server{},
		volumes:     map[int64]*volume{},
		actions:     map[int64]*action{},
		busy:        map[resource]*action{},
		delays:      map[string]time.Duration{},
		failActions: map[string][]schema.ActionError{},
		requests:    map[string]int{},
		rate:        newRateBucket(opts.RateLimit, opts.RateRefill),
	}
	// A fake that was killed leaves its devices behind: clear them.
	if err := c.sweep(); err != nil {
		return nil, err
	}
	for _, sub := range []string{"volumes", "servers"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	c.ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.Port)))
	if err != nil {
		return nil, err
	}
	c.srv = &http.Server{Handler: c.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { c.done <- c.srv.Serve(c.ln) }()
	return c, nil
}

// URL is the API endpoint, like https://api.hetzner.cloud/v1.
func (c *Cloud) URL() string { return "http://" + c.ln.Addr().String() + "/v1" }

// MetadataURL is the metadata service of a server, like
// http://169.254.169.254/hetzner/v1/metadata on that server.
func (c *Cloud) MetadataURL(serverID int64) string {
	return "http://" + c.ln.Addr().String() + "/metadata/" + strconv.FormatInt(serverID, 10)
}

// Dir is the directory holding the images and by-id directories.
func (c *Cloud) Dir() string { return c.dir }

// SetActionDelay sets how long actions with this command ("attach_volume",
// "detach_volume", "create_volume", "resize_volume", ...) run; the command
// "" sets the delay of all commands without one of their own.
func (c *Cloud) SetActionDelay(command string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if command == "" {
		c.opts.ActionDelay = d
		return
	}
	c.delays[command] = d
}

// FailActions makes the next times actions with this command finish with
// status "error" and the given error code and message, without effect.
func (c *Cloud) FailActions(command, code, message string, times int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for range times {
		c.failActions[command] = append(c.failActions[command], schema.ActionError{Code: code, Message: message})
	}
}

// Requests counts the API requests the fake has answered.
type Requests struct {
	Total int `json:"total"`
	// ByRoute counts by method and route, e.g. "GET /volumes/{id}".
	ByRoute map[string]int `json:"by_route"`
	// Limited counts the requests answered 429 because the budget was
	// spent (with EnforceRateLimit).
	Limited int `json:"limited"`
}

// Requests returns the API requests answered since the start or the last
// ResetRequests.
func (c *Cloud) Requests() Requests {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := Requests{Total: c.total, ByRoute: map[string]int{}, Limited: c.limited}
	for k, v := range c.requests {
		r.ByRoute[k] = v
	}
	return r
}

// ResetRequests sets the request counts to zero.
func (c *Cloud) ResetRequests() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total, c.limited = 0, 0
	c.requests = map[string]int{}
}

// Volumes returns the volumes as the API shows them, by id.
func (c *Cloud) Volumes() []schema.Volume {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]schema.Volume, 0, len(c.volumes))
	for _, id := range sortedKeys(c.volumes) {
		out = append(out, c.volumes[id].view())
	}
	return out
}

// RunningActions returns the actions still running.
func (c *Cloud) RunningActions() []schema.Action {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []schema.Action
	for _, id := range sortedKeys(c.actions) {
		if a := c.actions[id]; a.Status == "running" {
			out = append(out, a.Action)
		}
	}
	return out
}

// Actions returns the actions with a command ("" for all), by id.
func (c *Cloud) Actions(command string) []schema.Action {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []schema.Action
	for _, id := range sortedKeys(c.actions) {
		if a := c.actions[id]; command == "" || a.Command == command {
			out = append(out, a.Action)
		}
	}
	return out
}

// WaitIdle waits until no action is running, or the timeout passes.
func (c *Cloud) WaitIdle(timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; {
		running := c.RunningActions()
		if len(running) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fakecloud: %d actions still running after %s", len(running), timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close stops the API, lets actions in progress finish their work (those
// not yet started never finish), and removes every volume's device, link
// and image: the volumes go with the fake.
func (c *Cloud) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, a := range c.actions {
		if a.timer != nil && a.timer.Stop() {
			c.pending.Done()
		}
	}
	c.mu.Unlock()
	err := c.srv.Close()
	<-c.done
	c.pending.Wait()

	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, id := range sortedKeys(c.volumes) {
		v := c.volumes[id]
		if v.Server != nil {
			errs = append(errs, c.unplug(v, c.servers[*v.Server]))
		}
	}
	errs = append(errs, c.sweep(), err)
	return errors.Join(errs...)
}

// nextID returns the next id of a kind of resource. Callers hold c.mu.
func (c *Cloud) nextID(kind string) int64 {
	c.seq[kind]++
	return c.seq[kind]
}

// apiError is an error answer of the API.
type apiError struct {
	status  int
	code    string
	message string
	details any
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (%s)", e.message, e.code) }

func notFound(what string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "not_found", message: what + " not found"}
}

func invalidInput(field, message string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "invalid_input", message: "invalid input in field '" + field + "'",
		details: map[string]any{"fields": []map[string]any{{"name": field, "messages": []string{message}}}}}
}

func lockedError(kind string, a *action) *apiError {
	return &apiError{status: http.StatusLocked, code: "locked",
		message: fmt.Sprintf("%s is locked by action %d (%s)", kind, a.ID, a.Command)}
}

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
}

func writeError(w http.ResponseWriter, e *apiError) {
	details := e.details
	if details == nil {
		details = map[string]any{}
	}
	writeJSON(w, e.status, map[string]any{"error": map[string]any{
		"code": e.code, "message": e.message, "details": details}})
}

func correlationID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
