// Package loop is the zero-infrastructure backend: each volume is a sparse
// image file in a data directory, attached to a node as a loop device.
package loop

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Sizes of the loop backend.
const (
	// DefaultSize is the size of a volume created without a capacity range
	// (Swarm sends {0,0} when the user gives no --required-bytes).
	DefaultSize = 1 * backend.GiB
	// Granularity is the unit sizes are rounded up to.
	Granularity = 1 * backend.MiB
	// MinSize keeps volumes large enough for an ext4 journal.
	MinSize = 16 * backend.MiB

	// TopologyKey is the topology segment naming the data directory: nodes
	// that share it can reach the same volumes.
	TopologyKey = filestore.TopologyKey
	// ParamDirectIO ("true", or "false", the default) makes the loop device
	// bypass the page cache of the data directory's filesystem: less
	// memory (the data is not cached twice), slower reads and bulk writes,
	// faster fsyncs (README, Volumes). Mutable: it takes effect at the
	// volume's next attach.
	ParamDirectIO = "directIO"
)

// Backend is the controller side of the loop backend (ForNode gives the node
// side). All of its state lives in the data directory.
type Backend struct {
	store *store
	loops *loopDevices
	now   func() time.Time
}

var (
	_ backend.Complete          = (*Backend)(nil)
	_ backend.AttachmentCounter = (*Backend)(nil)
	_ backend.VolumePager       = (*Backend)(nil)
	_ backend.SnapshotPager     = (*Backend)(nil)
	_ backend.NameFinder        = (*Backend)(nil)
)

// New opens (creating it if needed) the data directory at dataDir.
func New(dataDir string) (*Backend, error) {
	s, err := openStore(dataDir)
	if err != nil {
		return nil, err
	}
	return &Backend{store: s, loops: newLoopDevices(), now: time.Now}, nil
}

// Info implements backend.Controller.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Name:        "loop",
		DefaultSize: DefaultSize,
		Granularity: Granularity,
		MinSize:     MinSize,
		Topology:    b.Topology(),
	}
}

// Topology returns the segment of the nodes sharing this data directory.
func (b *Backend) Topology() map[string]string {
	return map[string]string{TopologyKey: b.store.ID}
}

// MutableParameters implements backend.Modifier.
func (b *Backend) MutableParameters() []string { return []string{ParamDirectIO} }

func checkMutable(params map[string]string) error {
	for k, v := range params {
		if k != ParamDirectIO {
			return csierr.Invalid("mutable parameter %q is not supported; the loop backend accepts: %s", k, ParamDirectIO)
		}
		if v != "true" && v != "false" {
			return csierr.Invalid("mutable parameter %s=%q: want true or false", k, v)
		}
	}
	return nil
}

func directIO(v *backend.Volume) bool { return v.MutableParameters[ParamDirectIO] == "true" }

// Capacity implements backend.CapacityReporter: the free space of the data directory.
func (b *Backend) Capacity(context.Context) (int64, error) { return b.store.Free() }

// NodeKnown implements backend.Controller: nodes register a directory.
func (b *Backend) NodeKnown(_ context.Context, nodeID string) (bool, error) {
	return b.store.NodeKnown(nodeID)
}

// Register implements backend.Node.
func (b *Backend) Register(_ context.Context, nodeID string) error { return b.store.Register(nodeID) }

// Condition implements backend.Controller: the image must exist at full size.
func (b *Backend) Condition(_ context.Context, v *backend.Volume) backend.Condition {
	fi, err := os.Stat(b.store.volumeImage(v.ID))
	switch {
	case err != nil:
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("image file: %v", err)}
	case fi.Size() < v.CapacityBytes:
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("image file is %d bytes, volume is %d", fi.Size(), v.CapacityBytes)}
	}
	return backend.Condition{Message: "image file present"}
}
