// Package rbd is the Ceph RBD backend: each volume is an RBD image, its
// snapshots are RBD snapshots and its copies clone v2 images. Control
// operations run in process through librados and librbd (cluster.go: the
// build with the tags ceph and pacific); the node side attaches images
// with the kernel's rbd driver, rbd-nbd, or rbd-fuse and a loop device,
// each a process of its own.
//
// Everything the driver records lives in Ceph (see index.go), so any
// manager can take over and any node can find a volume from its id alone.
package rbd

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// Sizes of the rbd backend.
const (
	// DefaultSize is the size of a volume created without a capacity range
	// (Swarm sends {0,0} when the user gives no --required-bytes).
	DefaultSize = 1 * backend.GiB
	// Granularity: rbd sizes are given in MiB.
	Granularity = 1 * backend.MiB
	// MinSize keeps volumes large enough for an ext4 journal.
	MinSize = 16 * backend.MiB

	// DefaultCallTimeout bounds one call to Ceph. Swarm allows an
	// RPC about 15 s, and most RPCs need one to five calls that take
	// well under a second each on a healthy cluster.
	DefaultCallTimeout = 10 * time.Second

	// TopologyKey names the Ceph cluster (its monitors): every node that
	// reaches them reaches every volume.
	TopologyKey = "swarm-csi/rbd"
)

// CreateVolume parameters of this backend.
const (
	ParamPool          = "pool"
	ParamImageFeatures = "imageFeatures"
)

// Mutable parameters (CreateVolume's mutable_parameters and
// ControllerModifyVolume): librbd's per-image QoS limits, in operations and
// bytes per second, "0" for none. librbd applies them (attach modes nbd and
// fuse) from the image's next refresh on; the kernel's rbd driver has no
// QoS and ignores them.
const (
	ParamQoSIOPS = "qosIopsLimit"
	ParamQoSBPS  = "qosBpsLimit"
)

// qosOptions are the librbd options the mutable parameters set.
var qosOptions = map[string]string{
	ParamQoSIOPS: "rbd_qos_iops_limit",
	ParamQoSBPS:  "rbd_qos_bps_limit",
}

// Secrets a request may carry (Swarm: docker volume create --secret
// userKey=<swarm secret>). They take precedence over the configured key.
const (
	SecretUserKey = "userKey"
	SecretUserID  = "userID"
)

// Config is how the backend reaches Ceph.
type Config struct {
	// Monitors are the monitor addresses, comma-separated, as in ceph.conf's
	// "mon host" (host, host:port, or [v2:addr:port,v1:addr:port]).
	Monitors string
	// Pool is the default pool; it also holds the index.
	Pool string
	// User is the cephx user without "client.".
	User string
	// Keyring is a keyring file holding User's key. Key, if set instead,
	// is the bare key; it is written to a keyring file of mode 0600.
	Keyring string
	Key     string
	// ImageFeatures are the default features of new images
	// (rbd --image-feature), comma-separated; "" leaves Ceph's default.
	ImageFeatures string
	// DataPool, if set, holds the images' data (erasure-coded pools).
	DataPool string
	// Prefix makes image names unique to this swarm.
	Prefix string
	// StateDir is a private directory for the Ceph configuration file,
	// keyrings and (fuse mode) mount points.
	StateDir string
	// CallTimeout bounds each command (DefaultCallTimeout if 0).
	CallTimeout time.Duration
	// Runner runs the commands (ExecRunner if nil).
	Runner Runner
	// Log receives what is not returned as an error; nil discards.
	Log *slog.Logger
}

// Backend is the controller side of the rbd backend (ForNode gives the
// node side).
type Backend struct {
	cfg   Config
	cli   *cli    // the attach tools (rbd device map)
	cl    cluster // every control operation
	names names
	index *index
	creds creds // the configured identity
	now   func() time.Time
	// known caches the nodes found registered: nodes never unregister.
	known sync.Map
	// attIndex remembers that the attachments are indexed by node.
	attIndex attachmentIndex
	// localIP reports whether an IP is this host's (hostHasIP): its
	// clients are never fenced.
	localIP func(net.IP) bool
}

var (
	_ backend.Complete          = (*Backend)(nil)
	_ backend.AttachmentCounter = (*Backend)(nil)
	_ backend.VolumePager       = (*Backend)(nil)
	_ backend.SnapshotPager     = (*Backend)(nil)
	_ backend.NameFinder        = (*Backend)(nil)
)

// New checks cfg and writes the Ceph configuration and keyring it needs.
// It does not contact Ceph: the driver must answer Probe at once, even
// while the cluster is unreachable.
func New(cfg Config) (*Backend, error) {
	return newBackend(cfg, openCluster)
}

// newBackend is New with the cluster open gives.
func newBackend(cfg Config, open func(Config, string) (cluster, error)) (*Backend, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Runner == nil {
		cfg.Runner = ExecRunner{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("rbd state directory: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("rbd state directory: %w", err)
	}
	conf := filepath.Join(cfg.StateDir, "ceph.conf")
	if err := fsutil.WriteFileAtomic(conf, []byte(cephConf(cfg)), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", conf, err)
	}
	cl, err := open(cfg, conf)
	if err != nil {
		return nil, err
	}
	b := &Backend{cfg: cfg, cl: cl, names: names{prefix: cfg.Prefix}, now: time.Now, localIP: hostHasIP}
	b.cli = &cli{run: cfg.Runner, conf: conf, timeout: cfg.CallTimeout}
	b.index = &index{cl: cl, image: imageRef{cfg.Pool, b.names.index()}}
	b.creds = creds{user: cfg.User, keyring: cfg.Keyring}
	if cfg.Key != "" {
		k, err := b.keyring(cfg.User, cfg.Key)
		if err != nil {
			return nil, err
		}
		b.creds.keyring = k
	}
	return b, nil
}

// ConfigError is a bad setting: Field names it (monitors, pool, data-pool,
// user, image-features, prefix, key, keyring, state-dir).
type ConfigError = backend.ConfigError

func (c Config) check() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case strings.TrimSpace(c.Monitors) == "" || strings.ContainsAny(c.Monitors, "\n\r#;= "):
		return bad("monitors", "%q: want addresses such as 10.0.0.1,10.0.0.2:6789", c.Monitors)
	case !poolPattern.MatchString(c.Pool):
		return bad("pool", "%q: letters, digits, '.', '_' and '-'", c.Pool)
	case c.DataPool != "" && !poolPattern.MatchString(c.DataPool):
		return bad("data-pool", "%q: letters, digits, '.', '_' and '-'", c.DataPool)
	case !validUser(c.User) || strings.HasPrefix(c.User, "client."):
		return bad("user", "%q: the cephx user without \"client.\", e.g. swarm-csi", c.User)
	case c.ImageFeatures != "" && !featuresPattern.MatchString(c.ImageFeatures):
		return bad("image-features", "%q: comma-separated names such as layering,exclusive-lock", c.ImageFeatures)
	case !prefixPattern.MatchString(c.Prefix):
		return bad("prefix", "%q: lower-case letters, digits and '-', at most 32", c.Prefix)
	case (c.Key == "") == (c.Keyring == ""):
		return bad("key", "give exactly one of a key and a keyring file")
	case c.Key != "" && !validKey(c.Key):
		return bad("key", "not a cephx key (base64, as `ceph auth print-key` prints it)")
	case c.Keyring != "" && !filepath.IsAbs(c.Keyring):
		return bad("keyring", "%q: want an absolute path", c.Keyring)
	case !filepath.IsAbs(c.StateDir):
		return bad("state-dir", "%q: want an absolute path", c.StateDir)
	}
	if c.Keyring != "" {
		if _, err := os.Stat(c.Keyring); err != nil {
			return bad("keyring", "%v", err)
		}
	}
	return nil
}

// validKey reports whether k looks like a cephx key: base64, no spaces.
func validKey(k string) bool {
	b, err := base64.StdEncoding.DecodeString(k)
	return err == nil && len(b) >= 16 && len(k) <= 256
}

// cephConf is the client configuration every command and daemon reads.
// The timeouts make a tool give up by itself, with a message, before the
// driver's own timeout would have to kill it.
func cephConf(c Config) string {
	t := int((c.CallTimeout - 2*time.Second) / time.Second)
	if c.CallTimeout <= 0 {
		t = int((DefaultCallTimeout - 2*time.Second) / time.Second)
	}
	t = max(t, 2)
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by swarm-csi; replaced at every start.\n[global]\n")
	fmt.Fprintf(&b, "mon host = %s\n", c.Monitors)
	fmt.Fprintf(&b, "client mount timeout = %d\nrados mon op timeout = %d\nrados osd op timeout = %d\n", t, t, t)
	// Copies are clone v2 images: no protected snapshot is needed, and a
	// snapshot with clones can be deleted (it waits in the trash).
	fmt.Fprintf(&b, "rbd default clone format = 2\n")
	fmt.Fprintf(&b, "admin socket =\nlog file =\nlog to stderr = true\nerr to stderr = true\n")
	// Every tool makes its run directory at start and aborts if it cannot
	// (the default, /var/run/ceph, is missing in the plugin's rootfs);
	// crash reports go beside it.
	fmt.Fprintf(&b, "run dir = %s\ncrash dir = %s\n", filepath.Join(c.StateDir, "run"), filepath.Join(c.StateDir, "crash"))
	return b.String()
}

// keyring returns a keyring file (mode 0600) holding key for user. Files are
// named by a hash of both, so each is written once.
func (b *Backend) keyring(user, key string) (string, error) {
	sum := sha256.Sum256([]byte(user + "\x00" + key))
	path := filepath.Join(b.cfg.StateDir, "keys", hex.EncodeToString(sum[:12])+".keyring")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	content := fmt.Sprintf("[client.%s]\n\tkey = %s\n", user, key)
	if err := fsutil.WriteFileAtomic(path, []byte(content), 0o600); err != nil {
		return "", fmt.Errorf("write keyring: %w", err)
	}
	return path, nil
}

// credsFor returns the identity for a call: the request's secrets if it
// carries a key, the configured one otherwise.
func (b *Backend) credsFor(ctx context.Context) (creds, error) {
	s := backend.Secrets(ctx)
	key := s[SecretUserKey]
	if key == "" {
		if _, ok := s[SecretUserID]; ok {
			return creds{}, csierr.Invalid("secret %s needs %s beside it", SecretUserID, SecretUserKey)
		}
		return b.creds, nil
	}
	if !validKey(key) {
		return creds{}, csierr.Invalid("secret %s is not a cephx key (base64, as `ceph auth print-key` prints it)", SecretUserKey)
	}
	user := b.cfg.User
	if u := s[SecretUserID]; u != "" {
		user = strings.TrimPrefix(u, "client.")
		if !validUser(user) {
			return creds{}, csierr.Invalid("secret %s %q is not a cephx user name", SecretUserID, u)
		}
	}
	k, err := b.keyring(user, key)
	if err != nil {
		return creds{}, err
	}
	return creds{user: user, keyring: k}, nil
}

// Info implements backend.Controller.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Name:        "rbd",
		Parameters:  []string{ParamPool, ParamImageFeatures},
		DefaultSize: DefaultSize,
		Granularity: Granularity,
		MinSize:     MinSize,
		Topology:    b.Topology(),
	}
}

// Topology returns the segment of the nodes that reach this cluster: a
// hash of its monitors (in any order) and default pool.
func (b *Backend) Topology() map[string]string {
	mons := monitorList(b.cfg.Monitors)
	slices.Sort(mons)
	sum := sha256.Sum256([]byte(strings.Join(mons, ",") + "\x00" + b.cfg.Pool))
	return map[string]string{TopologyKey: hex.EncodeToString(sum[:8])}
}

// monitorList splits a "mon host" value at the commas that separate
// monitors, not those inside one monitor's [v2:…,v1:…].
func monitorList(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, r := range s + "," {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case r == ',' && depth == 0:
			if m := strings.TrimSpace(s[start:i]); m != "" {
				out = append(out, m)
			}
			start = i + 1
		}
	}
	return out
}

// Capacity implements backend.CapacityReporter: what the default pool can still
// take (ceph df's max_avail, which accounts for replication).
func (b *Backend) Capacity(ctx context.Context) (int64, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return 0, err
	}
	return b.cl.PoolAvailable(ctx, cr, b.cfg.Pool)
}

// NodeKnown implements backend.Controller: nodes register in the index.
func (b *Backend) NodeKnown(ctx context.Context, nodeID string) (bool, error) {
	if !backend.ValidNodeID(nodeID) {
		return false, nil
	}
	cr, err := b.credsFor(ctx)
	if err != nil {
		return false, err
	}
	if _, ok := b.known.Load(nodeID); ok {
		return true, nil
	}
	var rec nodeRecord
	err = b.index.get(ctx, cr, nodeKeyPrefix+nodeID, &rec)
	if errors.Is(err, KindNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	b.known.Store(nodeID, true)
	return true, nil
}

type nodeRecord struct {
	RegisteredAt time.Time `json:"registeredAt"`
	AttachMode   string    `json:"attachMode"`
}

// Condition implements backend.Controller: the image must exist at the
// volume's size; its watchers (the nodes that have it open) are reported.
func (b *Backend) Condition(ctx context.Context, v *backend.Volume) backend.Condition {
	ref, _, ok := b.names.parseVolumeID(v.ID)
	if !ok {
		return backend.Condition{Abnormal: true, Message: "not an rbd volume id"}
	}
	cr, err := b.credsFor(ctx)
	if err != nil {
		return backend.Condition{Abnormal: true, Message: err.Error()}
	}
	info, err := b.info(ctx, cr, ref)
	if err != nil {
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("image %s: %v", ref, err)}
	}
	if info.Size < v.CapacityBytes {
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("image %s is %d bytes, the volume %d", ref, info.Size, v.CapacityBytes)}
	}
	w, err := b.cl.Watchers(ctx, cr, ref)
	if err != nil {
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("image %s: %v", ref, err)}
	}
	return backend.Condition{Message: fmt.Sprintf("image %s present, %d watcher(s)", ref, len(w))}
}

func (b *Backend) info(ctx context.Context, cr creds, ref imageRef) (*imageInfo, error) {
	return b.cl.Info(ctx, cr, ref)
}
