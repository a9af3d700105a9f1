// Package hcloud is the Hetzner Cloud backend: each volume is a Hetzner
// Cloud volume, created and attached to servers by the controller through
// the Hetzner Cloud API (github.com/hetznercloud/hcloud-go), and found on
// the node under /dev/disk/by-id as scsi-0HC_Volume_<id>.
//
// Nothing is kept outside the API: a volume's CSI settings are its labels,
// so any controller process (a new Swarm leader, a restarted driver) finds
// everything there. Every operation that starts an action in the cloud
// waits for it within a budget; when the budget is spent the call answers
// Aborted and the action goes on, and the retry finds it running and waits
// for it instead of starting another.
package hcloud

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Sizes and limits of Hetzner Cloud volumes.
const (
	// MinSize is the smallest Hetzner Cloud volume, and the size of one
	// created without a capacity range (Swarm sends {0,0} when the user
	// gives no --required-bytes).
	MinSize = 10 * backend.GiB
	// MaxSize is the largest Hetzner Cloud volume.
	MaxSize = 10240 * backend.GiB
	// MaxVolumesPerServer is how many volumes one server takes.
	MaxVolumesPerServer = 16

	// TopologyKey is the topology segment naming the location: a volume
	// attaches only to servers in its own location.
	TopologyKey = "swarm-csi/location"
	// SecretToken is the CSI secret that carries an API token for a
	// request, in place of the configured one (Swarm: --secret).
	SecretToken = "hcloudToken"
	// DevicePrefix starts the by-id name of a volume's device; the
	// volume id follows.
	DevicePrefix = "scsi-0HC_Volume_"
	// DefaultWait is how long a call waits for an action by default: the
	// answer must reach Swarm within its budget of about 15 s per call.
	DefaultWait = 10 * time.Second
)

// Config is the backend's configuration.
type Config struct {
	// Token is the API token; a request's secret hcloudToken replaces it.
	Token string
	// Endpoint is the API's URL (hcloud.Endpoint, or a compatible API).
	Endpoint string
	// Location is where volumes are created ("fsn1", "nbg1", ...).
	Location string
	// Cluster labels this swarm's volumes: swarms sharing a project never
	// see each other's.
	Cluster string
	// Wait bounds how long a call waits for actions and devices.
	Wait time.Duration
	// Version goes into the API client's user agent.
	Version string
	// HTTPClient makes the API requests (default: http.DefaultClient's
	// transport).
	HTTPClient *http.Client
	// Log receives what the backend does not return as an error (a spent
	// request budget); nil discards.
	Log *slog.Logger
}

// Backend is the controller side of the hcloud backend (ForNode gives the
// node side).
type Backend struct {
	cfg Config

	pace pace

	mu          sync.Mutex
	clients     map[[32]byte]*hcloud.Client // by hash of the token
	servers     map[serverKey]bool          // servers known to exist
	serverTurns map[serverKey]chan struct{} // see lockServer
	owned       map[serverKey]bool          // volumes known to be this cluster's, by the same key
	reads       map[*backend.Volume]handed
	views       map[[32]byte]*view // see view
	now         func() time.Time   // the clock of the views
}

// serverKey names a server, or a volume, of the project of a token.
type serverKey struct {
	token [32]byte
	id    int64
}

// Hetzner Cloud volumes grow, a server lists its volumes, and a publish
// may attach a volume without reading it (VolumeForPublish), but they have
// no snapshots, copies, mutable settings or capacity figure: the backend
// implements no other optional interface.
var _ interface {
	backend.Controller
	backend.Expander
	backend.AttachmentCounter
	backend.PublishReader
} = (*Backend)(nil)

// locationPattern is what a Hetzner Cloud location name looks like.
var locationPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{1,31}$`)

// New checks the configuration and returns the backend. It makes no API
// call: the driver must start even while the API is unreachable.
func New(cfg Config) (*Backend, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = hcloud.Endpoint
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultWait
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := CheckEndpoint(cfg.Endpoint); err != nil {
		return nil, err
	}
	if !locationPattern.MatchString(cfg.Location) {
		return nil, fmt.Errorf("location %q: want a Hetzner Cloud location such as fsn1, nbg1 or hel1", cfg.Location)
	}
	if err := CheckCluster(cfg.Cluster); err != nil {
		return nil, err
	}
	if cfg.Wait < 0 {
		return nil, fmt.Errorf("wait %s: want a positive duration", cfg.Wait)
	}
	if cfg.Token != "" {
		if err := checkToken(cfg.Token); err != nil {
			return nil, err
		}
	}
	return &Backend{cfg: cfg, clients: map[[32]byte]*hcloud.Client{}, servers: map[serverKey]bool{},
		serverTurns: map[serverKey]chan struct{}{}, owned: map[serverKey]bool{}, reads: map[*backend.Volume]handed{},
		views: map[[32]byte]*view{}, now: time.Now}, nil
}

// CheckEndpoint accepts an http or https URL with a host.
func CheckEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("endpoint %q: want an http or https URL such as %s", endpoint, hcloud.Endpoint)
	}
	return nil
}

// CheckCluster accepts a cluster name that can be a label value.
func CheckCluster(cluster string) error {
	if cluster == "" || len(cluster) > 63 || !labelValuePattern.MatchString(cluster) {
		return fmt.Errorf("cluster %q: want 1 to 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit (it is a label value)", cluster)
	}
	return nil
}

// checkToken refuses what cannot be an API token, without saying what it is.
func checkToken(token string) error {
	for _, r := range token {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("%w: the Hetzner Cloud API token contains whitespace or characters a token cannot have", csierr.ErrUnauthenticated)
		}
	}
	return nil
}

// Info implements backend.Controller.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Name:              "hcloud",
		DefaultSize:       MinSize,
		Granularity:       backend.GiB,
		MinSize:           MinSize,
		MaxSize:           MaxSize,
		Topology:          b.Topology(),
		SingleNodeOnly:    true,
		MaxVolumesPerNode: MaxVolumesPerServer,
	}
}

// Topology returns the segment of the configured location.
func (b *Backend) Topology() map[string]string {
	return map[string]string{TopologyKey: b.cfg.Location}
}

// client returns the API client for the request's token: its secret
// hcloudToken, or the configured token.
func (b *Backend) client(ctx context.Context) (*hcloud.Client, [32]byte, error) {
	token := b.cfg.Token
	if t := backend.Secrets(ctx)[SecretToken]; t != "" {
		token = t
	}
	if token == "" {
		return nil, [32]byte{}, fmt.Errorf("%w: no Hetzner Cloud API token: set --hcloud-token-file (HCLOUD_TOKEN_FILE) or pass the secret %s", csierr.ErrUnauthenticated, SecretToken)
	}
	if err := checkToken(token); err != nil {
		return nil, [32]byte{}, err
	}
	key := sha256.Sum256([]byte(token))
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.clients[key]; c != nil {
		return c, key, nil
	}
	// Each token has a budget of requests of its own.
	httpClient := *b.cfg.HTTPClient
	base := httpClient.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	httpClient.Transport = &budget{base: base, log: b.cfg.Log}
	c := hcloud.NewClient(
		hcloud.WithToken(token),
		hcloud.WithEndpoint(b.cfg.Endpoint),
		hcloud.WithApplication("swarm-csi", b.cfg.Version),
		hcloud.WithHTTPClient(&httpClient),
		// A 429 or a passing gateway error is retried twice, a 429 once
		// the budget allows it within the call's time (else the call
		// answers Unavailable at once); a longer outage is the caller's
		// to retry (Swarm retries with backoff), with the wait the API
		// asked for in the message.
		hcloud.WithRetryOpts(hcloud.RetryOpts{MaxRetries: 2, BackoffFunc: hcloud.ExponentialBackoffWithOpts(hcloud.ExponentialBackoffOpts{
			Base: 200 * time.Millisecond, Multiplier: 2, Cap: time.Second, Jitter: true})}),
	)
	b.clients[key] = c
	return c, key, nil
}

// op is one backend call: its API client and its time budget.
type op struct {
	b      *Backend
	parent context.Context
	ctx    context.Context // parent, bounded by the wait budget
	cancel context.CancelFunc
	api    *hcloud.Client
	token  [32]byte
}

// begin starts a call that may wait for actions.
func (b *Backend) begin(ctx context.Context) (*op, error) {
	api, token, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, b.cfg.Wait)
	return &op{b: b, parent: ctx, ctx: wctx, cancel: cancel, api: api, token: token}, nil
}

func (o *op) done() { o.cancel() }

// parseID parses a volume or server id: a positive decimal number in its
// canonical form, so that an id never becomes a path unchecked.
func parseID(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != s {
		return 0, false
	}
	return n, true
}

// own remembers that a volume is this cluster's: deleting it then needs no
// look-up first. Ownership does not change, and ids are not reused.
func (o *op) own(id int64, owned bool) {
	o.b.mu.Lock()
	defer o.b.mu.Unlock()
	if owned {
		o.b.owned[serverKey{o.token, id}] = true
	} else {
		delete(o.b.owned, serverKey{o.token, id})
	}
}

func (o *op) owns(id int64) bool {
	o.b.mu.Lock()
	defer o.b.mu.Unlock()
	return o.b.owned[serverKey{o.token, id}]
}

// maxReads bounds the reads remembered for Publish.
const maxReads = 256

// handed is the API's view of a volume that VolumeForPublish returned:
// read, or from memory (see view).
type handed struct {
	hv         *hcloud.Volume
	fromMemory bool
}

// remember keeps what VolumeForPublish returned as v: the controller
// looks at a volume, checks it and hands the same v to Publish, which then
// needs no read of its own.
func (b *Backend) remember(v *backend.Volume, h handed) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.reads) >= maxReads {
		clear(b.reads) // looks whose publish stopped before Publish
	}
	b.reads[v] = h
}

// recall returns, once, what remember kept for v (a nil hv if nothing).
func (b *Backend) recall(v *backend.Volume) handed {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.reads[v]
	delete(b.reads, v)
	return h
}
