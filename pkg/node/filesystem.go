package node

import (
	"context"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// Volumes that are directories of a shared filesystem (backend.FilesystemNode)
// have no device to attach, format or grow: the backend mounts the
// directory at the staging path, and from there the volume is published,
// released, restored and measured as any mounted filesystem.

// filesystem returns the backend as a FilesystemNode, or nil when its
// volumes are block devices.
func (s *Server) filesystem() backend.FilesystemNode {
	fs, _ := s.be.(backend.FilesystemNode)
	return fs
}

// stageDirectory has the backend mount the volume's directory at the
// staging path, after checking that this node reaches it.
func (s *Server) stageDirectory(ctx context.Context, fs backend.FilesystemNode, v *backend.Volume, staging string, c *csi.VolumeCapability) error {
	// A dead mount there is the backend's to replace.
	if err := os.MkdirAll(staging, 0o750); err != nil && deadMount(staging) == nil {
		return err
	}
	return fs.Mount(ctx, v, staging, volcap.ReadOnly(c.GetAccessMode().GetMode()))
}

// directoryUsable reports whether a volume still staged may be published
// as it is: for a filesystem backend, only after the backend's check of its
// directory and with its mount alive (a volume that fails either is staged
// again, which answers why or mounts it again).
func (s *Server) directoryUsable(ctx context.Context, volumeID, staging string) bool {
	fs := s.filesystem()
	return fs == nil || (fs.Check(ctx, volumeID) == nil && deadMount(staging) == nil)
}

// unmountStaging unmounts what stage mounted at the staging path.
func (s *Server) unmountStaging(ctx context.Context, volumeID, staging string) error {
	if fs := s.filesystem(); fs != nil {
		return fs.Unmount(ctx, volumeID, staging)
	}
	return s.mounter.Unmount(staging)
}

// probeDirectory is probe's last step for such a volume: the backend's
// check that its directory and the shared filesystem are still there.
func probeDirectory(ctx context.Context, fs backend.FilesystemNode, volumeID string) probed {
	if err := fs.Check(ctx, volumeID); err != nil {
		return inaccessible("DirectoryUnusable", "%v", err)
	}
	return probed{}
}
