package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// NodePublishVolume implements csi.NodeServer: bind-mount the staged
// filesystem, or the device itself for block access, at the target path.
func (s *Server) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, err := requestPath(req.GetVolumeId(), "target_path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	staging, err := cleanPath("staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	v, st, release, err := s.begin(ctx, req.GetVolumeId(), c)
	if err != nil {
		return nil, err
	}
	defer release()
	if st != nil && st.StagingPath != staging {
		return nil, csierr.Invalid("volume %s is staged at %s, not %s", v.ID, st.StagingPath, staging)
	}
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && st != nil {
		for _, t := range st.Targets {
			if t != target {
				return nil, csierr.Precondition("volume %s is SINGLE_NODE_SINGLE_WRITER and published at %s already", v.ID, t)
			}
		}
	}
	// A volume released by an earlier last unpublish, or whose mounts a
	// reboot took away, is staged again; one still staged is published as
	// it is (a volume grown meanwhile grows through the growth check).
	if st == nil || !s.stillStaged(ctx, v, st) {
		if st, err = s.stage(ctx, v, st, staging, c, req.GetPublishContext()); err != nil {
			return nil, err
		}
	}
	// Record the target before mounting, so a crash in between still has
	// it unmounted by the last unpublish.
	readOnly := req.GetReadonly() || volcap.ReadOnly(c.GetAccessMode().GetMode())
	if st.addTarget(target) || st.ReadOnly[target] != readOnly {
		if readOnly {
			if st.ReadOnly == nil {
				st.ReadOnly = map[string]bool{}
			}
			st.ReadOnly[target] = true
		}
		if err := s.state.save(st); err != nil {
			return nil, err
		}
	}
	if err := s.publish(ctx, v.ID, v.Block, staging, target, readOnly, c.GetMount().GetMountFlags()); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// stillStaged reports whether what st records is in place: the staging
// path mounted, or for block access the device attached.
func (s *Server) stillStaged(ctx context.Context, v *backend.Volume, st *staged) bool {
	if v.Block {
		dev, err := s.be.Device(ctx, v.ID)
		return err == nil && dev != ""
	}
	mounted, err := s.mounter.IsMountPoint(st.StagingPath)
	return err == nil && mounted && s.directoryUsable(ctx, v.ID, st.StagingPath)
}

func (s *Server) publish(ctx context.Context, volumeID string, block bool, staging, target string, readOnly bool, flags []string) error {
	source := staging
	if block {
		dev, err := s.be.Device(ctx, volumeID)
		if err != nil {
			return err
		}
		if dev == "" {
			return csierr.Precondition("volume %s has no device on this node", volumeID)
		}
		source = dev
	}
	// Swarm does not create the parents of its paths (docs/swarm.md,
	// "Staging and target paths").
	if s.filesystem() != nil {
		// A bind of a mount whose FUSE daemon died is bound again.
		if err := clearDeadMount(target); err != nil {
			return err
		}
	}
	if err := makeMountPoint(target, block); err != nil {
		return err
	}
	mounted, err := s.mounter.IsMountPoint(target)
	if err != nil || mounted {
		return err
	}
	opts := append([]string{}, flags...)
	if readOnly {
		opts = append(opts, "ro")
	}
	return s.mounter.BindMount(source, target, opts)
}

// makeMountPoint creates target and its parents: a directory for a
// filesystem, an empty file for a block device.
func makeMountPoint(target string, block bool) error {
	if !block {
		return os.MkdirAll(target, 0o750)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create block target %s: %w", target, err)
	}
	return f.Close()
}

// NodeUnpublishVolume implements csi.NodeServer. Swarm never sends
// NodeUnstageVolume (SwarmKit PR #3178), so the last unpublish of a volume
// on this node also unmounts the staging path and detaches the device.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target, release, err := s.lockRequest(req.GetVolumeId(), "target_path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := s.mounter.Unmount(target); err != nil {
		return nil, err
	}
	// A directory that still holds files was never our mount: leave it.
	if err := removePath(target); err != nil && !errors.Is(err, unix.ENOTEMPTY) {
		return nil, err
	}
	st, err := s.state.load(req.GetVolumeId())
	if err != nil || st == nil || !st.removeTarget(target) {
		return &csi.NodeUnpublishVolumeResponse{}, err
	}
	if len(st.Targets) > 0 {
		return &csi.NodeUnpublishVolumeResponse{}, s.state.save(st)
	}
	if err := s.release(ctx, st.VolumeID, st.StagingPath); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
