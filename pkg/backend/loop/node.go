package loop

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// NodeSide is the loop backend as the node service uses it: it attaches the
// data directory's images to this machine's loop devices.
type NodeSide struct {
	*Backend
	tag string // hash of the node id, part of every device tag
}

var _ backend.Node = (*NodeSide)(nil)

// ForNode returns the node side of b for the node named nodeID.
func (b *Backend) ForNode(nodeID string) *NodeSide {
	sum := sha256.Sum256([]byte(nodeID))
	return &NodeSide{Backend: b, tag: hex.EncodeToString(sum[:6])}
}

// Attach implements backend.Node. No publish context is needed: the image
// follows from the volume id (SwarmKit #3276 may send none).
func (n *NodeSide) Attach(_ context.Context, v *backend.Volume, _ map[string]string) (string, error) {
	if !ValidVolumeID(v.ID) {
		return "", csierr.NotFound("volume %q is not a loop volume id", v.ID)
	}
	image := n.store.volumeImage(v.ID)
	tag := loopTag(v.ID, n.tag)
	dev, err := n.loops.find(image, tag)
	if err != nil {
		return "", err
	}
	if dev == "" {
		return n.loops.attach(image, tag, directIO(v))
	}
	return dev, n.loops.refresh(dev, image)
}

// Blank reports whether the volume's image holds no data at all: it reads
// as zeros, so it holds no filesystem, and the node formats it without
// probing it. A filesystem that cannot tell data from holes says data.
func (n *NodeSide) Blank(_ context.Context, v *backend.Volume) (bool, error) {
	if !ValidVolumeID(v.ID) {
		return false, csierr.NotFound("volume %q is not a loop volume id", v.ID)
	}
	f, err := os.Open(n.store.volumeImage(v.ID))
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	return errors.Is(err, unix.ENXIO), nil // ENXIO: no data from offset 0 on
}

// Detach implements backend.Node.
func (n *NodeSide) Detach(ctx context.Context, volumeID string) error {
	dev, err := n.Device(ctx, volumeID)
	if err != nil || dev == "" {
		return err
	}
	return n.loops.detach(dev)
}

// Device implements backend.Node.
func (n *NodeSide) Device(_ context.Context, volumeID string) (string, error) {
	if !ValidVolumeID(volumeID) {
		return "", nil
	}
	return n.loops.find(n.store.volumeImage(volumeID), loopTag(volumeID, n.tag))
}

// Health implements backend.Node: the data directory must be readable and
// loop devices available.
func (n *NodeSide) Health(context.Context) error {
	if _, err := os.ReadDir(n.store.Path(volumesDir)); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	f, err := os.OpenFile(n.loops.devs.Control(), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("loop devices: %w", err)
	}
	return f.Close()
}
