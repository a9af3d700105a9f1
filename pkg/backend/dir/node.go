package dir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// NodeSide is the dir backend as the node service uses it: it bind-mounts
// volume directories at staging paths.
type NodeSide struct {
	*Backend
	mounts *mount.Mounter
}

var _ backend.FilesystemNode = (*NodeSide)(nil)

// ForNode returns the node side of b.
func (b *Backend) ForNode() *NodeSide { return &NodeSide{Backend: b, mounts: &mount.Mounter{}} }

// Mount implements backend.FilesystemNode: after the guard, a bind mount of
// the volume's directory, remounted read-only if asked.
func (n *NodeSide) Mount(_ context.Context, v *backend.Volume, staging string, readOnly bool) error {
	if err := n.check(v.ID); err != nil {
		return err
	}
	mounted, err := n.mounts.IsMountPoint(staging)
	if err != nil || mounted {
		return err
	}
	tree := n.volumeTree(v.ID)
	if err := unix.Mount(tree, staging, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s on %s: %w", tree, staging, err)
	}
	if readOnly {
		if err := unix.Mount("", staging, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(staging, 0)
			return fmt.Errorf("remount %s read-only: %w", staging, err)
		}
	}
	return nil
}

// Unmount implements backend.FilesystemNode.
func (n *NodeSide) Unmount(_ context.Context, _, staging string) error {
	mounted, err := n.mounts.IsMountPoint(staging)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !mounted {
		return nil
	}
	if err := unix.Unmount(staging, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", staging, err)
	}
	return nil
}

// Check implements backend.FilesystemNode.
func (n *NodeSide) Check(_ context.Context, volumeID string) error { return n.check(volumeID) }

// Attach implements backend.Node: there is no device.
func (n *NodeSide) Attach(context.Context, *backend.Volume, map[string]string) (string, error) {
	return "", csierr.Invalid("a dir volume is a directory of the shared filesystem: it has no device, and no size of its own to grow")
}

// Detach implements backend.Node: there is no device to detach.
func (n *NodeSide) Detach(context.Context, string) error { return nil }

// Device implements backend.Node: there is no device.
func (n *NodeSide) Device(context.Context, string) (string, error) { return "", nil }

// Health implements backend.Node: the data directory must be the shared
// filesystem the driver started with.
func (n *NodeSide) Health(context.Context) error { return n.guard() }
