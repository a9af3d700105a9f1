// Package cephfs is the CephFS backend: each volume is a subvolume of one
// subvolume group of a Ceph file system, its capacity the subvolume's
// quota, its snapshots CephFS snapshots and its copies CephFS clones. Every
// node mounts a volume once (ceph-fuse, or the kernel's client where the
// host has one) and bind-mounts it into containers, so a volume can be
// written from every node at once (MULTI_NODE_MULTI_WRITER).
//
// Control operations run in process through librados, libcephfs and the
// mgr's volumes module (cluster.go); the driver's records are small
// objects in the file system's metadata pool, so any manager can take over
// and any node can find a volume from its id alone.
package cephfs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// Sizes and defaults of the cephfs backend.
const (
	// DefaultQuota is the quota of a volume created without a capacity
	// range (Swarm sends {0,0} when the user gives neither
	// --required-bytes nor --limit-bytes).
	DefaultQuota = 1 * backend.GiB
	// Granularity: quotas are whole MiB.
	Granularity = 1 * backend.MiB
	// MinSize is the smallest quota.
	MinSize = 1 * backend.MiB

	// DefaultGroup is the subvolume group of the volumes.
	DefaultGroup = "swarm-csi"
	// DefaultCallTimeout bounds one call to Ceph.
	DefaultCallTimeout = 10 * time.Second
	// DefaultCloneWait is how long CreateVolume waits for a clone to
	// complete before answering Aborted, so that the caller retries.
	// Swarm allows an RPC about 15 s.
	DefaultCloneWait = 12 * time.Second

	// TopologyKey names the file system: every node that reaches its
	// monitors reaches every volume.
	TopologyKey = "swarm-csi/cephfs"
)

// The node's ways of mounting a subvolume.
const (
	ClientAuto   = "auto"   // the kernel's client where the host has one, else ceph-fuse
	ClientKernel = "kernel" // mount -t ceph
	ClientFuse   = "fuse"   // ceph-fuse
)

// ErrNoCeph is what New answers in a build without librados and libcephfs.
var ErrNoCeph = errors.New("this swarm-csi is built without Ceph support: " +
	"install the Ceph flavour of the plugin (deploy/build-plugin --with rbd) " +
	"or build with cgo and -tags ceph,pacific")

// Clients are the values of Config.Client.
var Clients = []string{ClientAuto, ClientKernel, ClientFuse}

// Config is how the backend reaches Ceph.
type Config struct {
	// Monitors are the monitor addresses, comma-separated, as in
	// ceph.conf's "mon host".
	Monitors string
	// User is the cephx user without "client.".
	User string
	// Keyring is a keyring file holding User's key. Key, if set instead,
	// is the bare key; it is written to a keyring file of mode 0600.
	Keyring string
	Key     string
	// FsName is the file system (ceph fs volume); Group the subvolume
	// group of this swarm's volumes (DefaultGroup if "").
	FsName, Group string
	// DefaultQuota is the quota of a volume given no capacity
	// (DefaultQuota if 0).
	DefaultQuota int64
	// Client is how nodes mount: ClientAuto (default), ClientKernel or
	// ClientFuse.
	Client string
	// StateDir is a private directory for the Ceph configuration file and
	// the keyring.
	StateDir string
	// CallTimeout bounds each call (DefaultCallTimeout if 0); CloneWait
	// is DefaultCloneWait if 0.
	CallTimeout, CloneWait time.Duration
	// Log receives what is not returned as an error; nil discards.
	Log *slog.Logger
}

// ConfigError is a bad setting: Field names it (monitors, user, key,
// fs-name, group, client, default-quota, state-dir).
type ConfigError = backend.ConfigError

var (
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	userPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	keyPattern  = regexp.MustCompile(`^[A-Za-z0-9+/=]{16,128}$`)
)

func (c *Config) check() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.Client == "" {
		c.Client = ClientAuto
	}
	if c.DefaultQuota == 0 {
		c.DefaultQuota = DefaultQuota
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.CloneWait <= 0 {
		c.CloneWait = DefaultCloneWait
	}
	switch {
	case strings.TrimSpace(c.Monitors) == "" || strings.ContainsAny(c.Monitors, "\n\r#;= "):
		return bad("monitors", "%q: want addresses such as 10.0.0.1,10.0.0.2:6789", c.Monitors)
	case !userPattern.MatchString(c.User) || strings.HasPrefix(c.User, "client."):
		return bad("user", "%q: the cephx user without \"client.\", e.g. swarm-csi", c.User)
	case (c.Key == "") == (c.Keyring == ""):
		return bad("key", "give the key or a keyring, exactly one")
	case c.Key != "" && !keyPattern.MatchString(c.Key):
		return bad("key", "not a cephx key (base64)")
	case !namePattern.MatchString(c.FsName):
		return bad("fs-name", "%q: the file system's name (ceph fs ls)", c.FsName)
	case !namePattern.MatchString(c.Group) || c.Group == "_nogroup":
		return bad("group", "%q: letters, digits, '.', '_' and '-'", c.Group)
	case c.Client != ClientAuto && c.Client != ClientKernel && c.Client != ClientFuse:
		return bad("client", "%q: want one of %s", c.Client, strings.Join(Clients, ", "))
	case c.DefaultQuota < MinSize || c.DefaultQuota%Granularity != 0:
		return bad("default-quota", "%d: want a whole number of MiB", c.DefaultQuota)
	case c.StateDir == "" || !filepath.IsAbs(c.StateDir):
		return bad("state-dir", "%q: want an absolute path", c.StateDir)
	}
	return nil
}

// Backend is the controller side of the cephfs backend (ForNode gives the
// node side).
type Backend struct {
	cfg Config
	cl  cluster
	// conf and keyring are the files ceph-fuse reads.
	conf, keyring string
	now           func() time.Time
}

var _ interface {
	backend.Controller
	backend.Expander
	backend.CapacityReporter
	backend.Snapshotter
	backend.Cloner
} = (*Backend)(nil)

// New checks cfg and writes the Ceph configuration and keyring. It does not
// contact Ceph: the driver must answer Probe at once, even while the
// cluster is unreachable.
func New(cfg Config) (*Backend, error) { return newBackend(cfg, openCluster) }

func newBackend(cfg Config, open func(Config, string, string) (cluster, error)) (*Backend, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("cephfs state directory: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("cephfs state directory: %w", err)
	}
	b := &Backend{cfg: cfg, now: time.Now,
		conf: filepath.Join(cfg.StateDir, "ceph.conf"), keyring: cfg.Keyring}
	if cfg.Key != "" {
		b.keyring = filepath.Join(cfg.StateDir, "keyring")
		k := fmt.Sprintf("[client.%s]\n\tkey = %s\n", cfg.User, cfg.Key)
		if err := fsutil.WriteFileAtomic(b.keyring, []byte(k), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", b.keyring, err)
		}
	}
	if err := fsutil.WriteFileAtomic(b.conf, []byte(cephConf(cfg, b.keyring)), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", b.conf, err)
	}
	cl, err := open(cfg, b.conf, b.keyring)
	if err != nil {
		return nil, err
	}
	b.cl = cl
	return b, nil
}

// cephConf is the client configuration: the monitors, cephx with the
// keyring, the timeouts of connecting and of OSD operations, and nothing
// written to disk. ceph-fuse, as a daemon, would otherwise create its run
// directory, /var/run/ceph, and abort where it cannot (the plugin's
// rootfs has no /var/run). (It also runs `mount -i -o remount` on its
// mount point to trim the kernel's dentries, and aborts if that fails:
// the plugin carries mount for it.) Monitor and mgr commands get no
// timeout of librados's own: a mgr command that timed out inside librados
// 16.2 freed an invalid pointer and aborted the process when its answer
// came late. The driver bounds each call by its context instead
// (goceph.go).
//
// ceph-fuse logs nothing to stderr: once mounted, its stderr is a pipe
// that nobody reads, and a log thread blocked on a full pipe holds every
// request of the mount (a container start waiting on a stat of it for
// good). Its failures to mount are still printed before it detaches.
func cephConf(c Config, keyring string) string {
	t := int(c.CallTimeout.Seconds())
	return fmt.Sprintf(`[global]
mon host = %s
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
[client]
keyring = %s
rados osd op timeout = %d
client mount timeout = %d
admin socket =
run dir =
log file =
log to stderr = false
err to stderr = false
`, c.Monitors, keyring, t, t)
}

// Info implements backend.Controller.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Name:             "cephfs",
		DefaultSize:      b.cfg.DefaultQuota,
		Granularity:      Granularity,
		MinSize:          MinSize,
		Topology:         b.Topology(),
		SharedFilesystem: true,
		Quota:            true,
	}
}

// Topology returns the segment of the nodes that reach this file system.
func (b *Backend) Topology() map[string]string {
	sum := sha256.Sum256([]byte(b.cfg.Monitors + "\x00" + b.cfg.FsName))
	return map[string]string{TopologyKey: hex.EncodeToString(sum[:8])}
}

// Capacity implements backend.CapacityReporter: what the data pool can
// still take.
func (b *Backend) Capacity(ctx context.Context) (int64, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	n, err := b.cl.Available(ctx)
	return n, b.cephErr(err, "capacity")
}

// Condition implements backend.Controller: the subvolume must be there.
func (b *Backend) Condition(ctx context.Context, v *backend.Volume) backend.Condition {
	ctx, cancel := b.call(ctx)
	defer cancel()
	info, err := b.cl.Info(ctx, b.cfg.Group, v.ID)
	if err != nil {
		return backend.Condition{Abnormal: true, Message: b.cephErr(err, "subvolume %s", v.ID).Error()}
	}
	return backend.Condition{Message: fmt.Sprintf("subvolume present, %d of %d bytes used", info.Used, info.Quota)}
}

// NodeKnown implements backend.Controller: nodes register a record.
func (b *Backend) NodeKnown(ctx context.Context, nodeID string) (bool, error) {
	if !backend.ValidNodeID(nodeID) {
		return false, nil
	}
	ctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cl.Get(ctx, nodeKey(nodeID))
	if isKind(err, KindNotFound) {
		return false, nil
	}
	return err == nil, b.cephErr(err, "node %s", nodeID)
}

// call bounds one call to Ceph.
func (b *Backend) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.cfg.CallTimeout)
}

// cephErr turns a cluster error into one of package csierr's, naming what
// was asked.
func (b *Backend) cephErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	what := fmt.Sprintf(format, args...)
	kind := KindOther
	var e *Error
	if errors.As(err, &e) {
		kind = e.Kind
	}
	switch kind {
	case KindNotFound:
		return fmt.Errorf("%w: %s: %v", csierr.ErrNotFound, what, err)
	case KindExists:
		return fmt.Errorf("%w: %s: %v", csierr.ErrAlreadyExists, what, err)
	case KindBusy:
		return fmt.Errorf("%w: %s: %v", csierr.ErrFailedPrecondition, what, err)
	case KindDenied:
		return fmt.Errorf("%w: %s: %v (check the user's caps, README \"CephFS\")", csierr.ErrPermissionDenied, what, err)
	case KindUnreachable:
		return fmt.Errorf("%w: %s: %v", csierr.ErrUnavailable, what, err)
	case KindNoSpace:
		return fmt.Errorf("%w: %s: %v", csierr.ErrResourceExhausted, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Record keys. Ids are random; a name maps to its id through a key of its
// own, so that a name used again after a delete gets a new subvolume.
func volumeKey(id string) string   { return "vol." + id }
func snapshotKey(id string) string { return "snap." + id }
func nodeKey(id string) string     { return "node." + id }
func volumeNameKey(name string) string {
	return "vname." + hashName(name)
}
func snapshotNameKey(name string) string { return "sname." + hashName(name) }

func hashName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])
}

var (
	volumeIDPattern   = regexp.MustCompile(`^vol-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^snap-[0-9a-f]{32}$`)
)

// ValidVolumeID reports whether id has the form of this backend's volume
// ids; only such ids ever name a subvolume.
func ValidVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// ValidSnapshotID reports whether id has the form of this backend's snapshot ids.
func ValidSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

func newID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
