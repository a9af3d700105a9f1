// Package dir is the backend for a filesystem that every node already
// mounts at the same path (NFS, GlusterFS, a host CephFS mount): each
// volume is a directory in the data directory, bind-mounted into
// containers, so it can be mounted writable on several nodes at once.
// Sizes are recorded, not enforced.
package dir

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Layout of the data directory, beside what every filestore.Store keeps
// (names, nodes, store-id); loop volumes may live in the same directory.
//
//	dir/volumes/<id>.json    volume record (written atomically)
//	dir/volumes/<id>/        the volume's tree
//	dir/snapshots/<id>.json  snapshot record
//	dir/snapshots/<id>/      the snapshot's tree
//	dir/tmp/                 trees being copied or deleted
//	dir/retained/<name>-<time>-<id>/  trees of deleted volumes (retain)
//	dir/node-state/<node-id>/  what each node has staged (NodeStateDir)
//	names/dir-vol-<sha256>   symlink from a volume name to its id
//	names/dir-snap-<sha256>  symlink from a snapshot name to its id
const (
	volumesDir   = "dir/volumes"
	snapshotsDir = "dir/snapshots"
	tmpDir       = "dir/tmp"
	retainedDir  = "dir/retained"

	volumeName   = "dir-vol-"
	snapshotName = "dir-snap-"
)

// OnDelete is what DeleteVolume does with a volume's tree.
type OnDelete string

// The choices of OnDelete.
const (
	// Retain moves the tree to dir/retained, named after the volume and
	// the time, so a volume removed by mistake can be recovered.
	Retain OnDelete = "retain"
	// Delete removes the tree.
	Delete OnDelete = "delete"
)

// ParseOnDelete checks a DIR_ON_DELETE value.
func ParseOnDelete(s string) (OnDelete, error) {
	switch OnDelete(s) {
	case Retain, Delete:
		return OnDelete(s), nil
	}
	return "", fmt.Errorf("%q: want retain or delete", s)
}

var (
	volumeIDPattern   = regexp.MustCompile(`^vol-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^snap-[0-9a-f]{32}$`)
)

// ValidVolumeID reports whether id has the form of this backend's volume
// ids. Only ids that pass it are ever turned into paths.
func ValidVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// ValidSnapshotID reports whether id has the form of this backend's snapshot ids.
func ValidSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

// Options configure the backend.
type Options struct {
	// DataDir is the data directory, on the shared filesystem.
	DataDir string
	// OnDelete is what DeleteVolume does with a tree (default Retain).
	OnDelete OnDelete
	// AllowLocal accepts a data directory on the root filesystem: a
	// deliberately local one, on a single node. Without it such a data
	// directory is taken for a shared mount that is missing.
	AllowLocal bool
}

// Backend is the controller side of the dir backend (ForNode gives the node
// side). All of its state lives in the data directory.
type Backend struct {
	store    *filestore.Store
	onDelete OnDelete
	// dev is the data directory's filesystem when the driver started;
	// rootDev the root filesystem's (0 with AllowLocal).
	dev, rootDev uint64
	now          func() time.Time
}

var _ interface {
	backend.Controller
	backend.CapacityReporter
	backend.Snapshotter
	backend.Cloner
	backend.AttachmentCounter
	backend.VolumePager
	backend.SnapshotPager
	backend.NameFinder
} = (*Backend)(nil)

// New opens the data directory, creating its layout and its marker (the
// store id) where missing.
func New(o Options) (*Backend, error) {
	if o.OnDelete == "" {
		o.OnDelete = Retain
	}
	if _, err := ParseOnDelete(string(o.OnDelete)); err != nil {
		return nil, fmt.Errorf("on delete: %w", err)
	}
	b := &Backend{onDelete: o.OnDelete, now: time.Now}
	if !o.AllowLocal {
		dev, err := deviceOf("/")
		if err != nil {
			return nil, err
		}
		b.rootDev = dev
	}
	s, err := filestore.Open(o.DataDir, volumesDir, snapshotsDir, tmpDir, retainedDir)
	if err != nil {
		return nil, err
	}
	if err := s.IndexAttachments(volumesDir, ValidVolumeID); err != nil {
		return nil, fmt.Errorf("attachment index: %w", err)
	}
	b.store = s
	if b.dev, err = deviceOf(s.Root); err != nil {
		return nil, err
	}
	return b, nil
}

func deviceOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Dev, nil
}

// guard checks that the data directory is the one the driver started with,
// on the shared filesystem: a node whose mount is missing sees an empty
// directory on its own disk instead, and must not write there. Every
// mount and every change to the store checks it first.
func (b *Backend) guard() error {
	root := b.store.Root
	dev, err := deviceOf(root)
	switch {
	case err != nil:
		return csierr.Precondition("data directory: %v", err)
	case b.rootDev != 0 && dev == b.rootDev:
		return csierr.Precondition("data directory %s is on the root filesystem: the shared filesystem is not mounted there on this node (set DIR_ALLOW_LOCAL=true for a local data directory)", root)
	case dev != b.dev:
		return csierr.Precondition("data directory %s is on another filesystem than when the driver started: mount the shared filesystem there again, or restart the plugin", root)
	}
	id, err := filestore.ReadID(root)
	switch {
	case err != nil:
		return csierr.Precondition("data directory %s carries no store marker (%v): the shared filesystem is not mounted there on this node", root, err)
	case id != b.store.ID:
		return csierr.Precondition("data directory %s carries store id %s, not %s as when the driver started: mount the shared filesystem there again, or restart the plugin", root, id, b.store.ID)
	}
	return nil
}

// Info implements backend.Controller.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Name:             "dir",
		Granularity:      1,
		Topology:         b.Topology(),
		SharedFilesystem: true,
	}
}

// Topology returns the segment of the nodes sharing this data directory.
func (b *Backend) Topology() map[string]string {
	return map[string]string{filestore.TopologyKey: b.store.ID}
}

// Capacity implements backend.CapacityReporter: the free space of the
// shared filesystem.
func (b *Backend) Capacity(context.Context) (int64, error) {
	if err := b.guard(); err != nil {
		return 0, err
	}
	return b.store.Free()
}

// NodeKnown implements backend.Controller: nodes register a directory.
func (b *Backend) NodeKnown(_ context.Context, nodeID string) (bool, error) {
	return b.store.NodeKnown(nodeID)
}

// Register implements backend.Node. A node whose shared filesystem is
// missing registers nowhere; it is known from an earlier start, if any.
func (b *Backend) Register(_ context.Context, nodeID string) error {
	if backend.ValidNodeID(nodeID) && b.guard() != nil {
		return nil // not on the shared filesystem: nowhere to register
	}
	return b.store.Register(nodeID) // which refuses a bad id
}

// Condition implements backend.Controller: the volume's directory must be
// there, on the shared filesystem.
func (b *Backend) Condition(_ context.Context, v *backend.Volume) backend.Condition {
	if err := b.check(v.ID); err != nil {
		return backend.Condition{Abnormal: true, Message: err.Error()}
	}
	return backend.Condition{Message: "directory present"}
}

// check returns why the volume's directory cannot be used, or nil.
func (b *Backend) check(id string) error {
	if err := b.guard(); err != nil {
		return err
	}
	if !ValidVolumeID(id) {
		return csierr.NotFound("volume %q is not a dir volume id", id)
	}
	path := b.volumeTree(id)
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	switch {
	case err != nil:
		return csierr.Precondition("volume directory %s: %v", path, err)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return csierr.Precondition("volume directory %s is not a directory", path)
	case st.Dev != b.dev:
		return csierr.Precondition("volume directory %s is on another filesystem than the data directory", path)
	}
	return nil
}

func (b *Backend) volumeRecord(id string) string   { return b.store.Path(volumesDir, id+".json") }
func (b *Backend) volumeTree(id string) string     { return b.store.Path(volumesDir, id) }
func (b *Backend) snapshotRecord(id string) string { return b.store.Path(snapshotsDir, id+".json") }
func (b *Backend) snapshotTree(id string) string   { return b.store.Path(snapshotsDir, id) }

// NodeStateDir is where the node service keeps its state, one directory per
// node: apart from a loop plugin's on the same data directory, which would
// take the dir volumes it finds there for volumes of its own that are gone.
func (b *Backend) NodeStateDir() string { return b.store.Path("dir", "node-state") }

// tmpTree is where the tree of id is built or removed.
func (b *Backend) tmpTree(id string) string { return b.store.Path(tmpDir, id) }
