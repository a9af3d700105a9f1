package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// NodeStageVolume implements csi.NodeServer: attach the device, format it
// if it is blank, mount it at the staging path and grow the filesystem if
// the volume was expanded since.
func (s *Server) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	staging, err := requestPath(req.GetVolumeId(), "staging_target_path", req.GetStagingTargetPath())
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
		return nil, fmt.Errorf("%w: volume %s is staged at %s already", csierr.ErrAlreadyExists, v.ID, st.StagingPath)
	}
	if _, err := s.stage(ctx, v, st, staging, c, req.GetPublishContext()); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// requestPath checks the volume id of a request and cleans its path field
// as cleanPath does.
func requestPath(volumeID, field, p string) (string, error) {
	if volumeID == "" {
		return "", csierr.Invalid("volume_id is required")
	}
	return cleanPath(field, p)
}

// lockRequest does what unstage and unpublish start with: check the
// request's volume id and path field, and take the volume's lock.
func (s *Server) lockRequest(volumeID, field, p string) (string, func(), error) {
	path, err := requestPath(volumeID, field, p)
	if err != nil {
		return "", nil, err
	}
	release, err := s.lock(volumeID)
	return path, release, err
}

// begin does what stage and publish start with: check the capability, take
// the volume's lock, and look up the volume and what this node knows of it.
func (s *Server) begin(ctx context.Context, volumeID string, c *csi.VolumeCapability) (*backend.Volume, *staged, func(), error) {
	if err := errors.Join(volcap.Check(c), volcap.CheckShared(c, s.filesystem() != nil)); err != nil {
		return nil, nil, nil, err
	}
	release, err := s.lock(volumeID)
	if err != nil {
		return nil, nil, nil, err
	}
	v, err := s.volumeFor(ctx, volumeID, c)
	if err == nil {
		var st *staged
		if st, err = s.state.load(v.ID); err == nil {
			return v, st, release, nil
		}
	}
	release()
	return nil, nil, nil, err
}

// volumeFor looks the volume up in the backend, which needs nothing but the
// id (Swarm may send no publish context, SwarmKit #3276), and checks that
// the capability suits it.
func (s *Server) volumeFor(ctx context.Context, id string, c *csi.VolumeCapability) (*backend.Volume, error) {
	v, err := s.be.Volume(ctx, id)
	if err != nil {
		return nil, err
	}
	if volcap.IsBlock(c) != v.Block {
		kind := map[bool]string{true: "block", false: "mount"}
		return nil, csierr.Invalid("volume %s was created for %s access, not %s", id, kind[v.Block], kind[volcap.IsBlock(c)])
	}
	if f := c.GetMount().GetFsType(); f != "" && f != v.FsType {
		return nil, csierr.Invalid("volume %s has an %s filesystem, not %s", id, v.FsType, f)
	}
	return v, nil
}

// stage brings a volume to the staged state from wherever it is: nothing
// done yet, a crash half-way, or released after its last unpublish.
func (s *Server) stage(ctx context.Context, v *backend.Volume, st *staged, staging string, c *csi.VolumeCapability, pc map[string]string) (*staged, error) {
	if st == nil {
		// Remember the volume before touching anything, so that whatever
		// a crash leaves behind is found and released later.
		st = &staged{VolumeID: v.ID, StagingPath: staging, Block: v.Block,
			AccessMode: volcap.ModeName(c.GetAccessMode().GetMode()), MountFlags: c.GetMount().GetMountFlags()}
		if err := s.state.save(st); err != nil {
			return nil, err
		}
	}
	if fs := s.filesystem(); fs != nil {
		return st, s.stageDirectory(ctx, fs, v, staging, c)
	}
	dev, err := s.be.Attach(ctx, v, pc)
	if err != nil {
		return nil, err
	}
	if v.Block {
		return st, nil // published straight from the device
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, err
	}
	mounted, err := s.mounter.IsMountPoint(staging)
	if err != nil {
		return nil, err
	}
	readOnly := volcap.ReadOnly(c.GetAccessMode().GetMode())
	// A volume never written holds no filesystem to probe for or grow.
	blank := !mounted && !readOnly && s.blank(ctx, v)
	if !mounted {
		// An expanded volume grows at its next stage, since Swarm never
		// calls NodeExpandVolume (docs/swarm.md, "What Swarm never
		// calls"). ext4 grows best unmounted: that needs no
		// CAP_SYS_RESOURCE.
		if !readOnly && !blank {
			s.growUnmounted(dev, v)
		}
		mkfsArgs, err := volcap.SplitMkfsOptions(v.MkfsOptions)
		if err != nil {
			return nil, err
		}
		// The volume's own options (mountOptions) follow the
		// capability's flags.
		volOpts, err := volcap.SplitMountOptions(v.MountOptions)
		if err != nil {
			return nil, err
		}
		opts := append(slices.Clone(c.GetMount().GetMountFlags()), volOpts...)
		if v.FsType == "xfs" {
			// Clones and snapshots share the source's XFS uuid; without
			// nouuid the second one would not mount on the same node.
			opts = append(opts, "nouuid")
		}
		if readOnly {
			opts = append(opts, "ro")
		}
		formatAndMount := s.mounter.FormatAndMount
		if blank {
			formatAndMount = s.mounter.FormatBlankAndMount
		}
		if err := formatAndMount(dev, staging, v.FsType, mkfsArgs, opts); err != nil {
			var me mount.MountError
			if errors.As(err, &me) && me.Type == mount.UnformattedReadOnly {
				return nil, csierr.Precondition("volume %s has no filesystem and its access mode is read-only: create it from a snapshot or volume", v.ID)
			}
			return nil, fmt.Errorf("stage volume %s: %w", v.ID, err)
		}
	}
	if !readOnly && !blank {
		// What could not grow unmounted (XFS) grows now. A filesystem that
		// cannot grow yet is still usable: staging goes on.
		if err := s.grow(dev, staging, v.FsType); err != nil {
			s.cfg.Log.Warn("filesystem not grown at stage", "volume", v.ID, "error", err)
		}
	}
	if v.Root != nil && !readOnly {
		if set, err := initRoot(staging, *v.Root); err != nil {
			return nil, fmt.Errorf("stage volume %s: owner and mode of its root directory: %w", v.ID, err)
		} else if set {
			s.cfg.Log.Info("root directory of the new filesystem given its owner and mode", "volume", v.ID)
		}
	}
	return st, nil
}

// blankChecker is a backend that can tell, without reading a volume's
// device, that it was never written: the loop backend, from an image that
// holds no data.
type blankChecker interface {
	Blank(ctx context.Context, v *backend.Volume) (bool, error)
}

// blank reports whether the backend knows the volume was never written.
// Formatting it then needs no probe for a filesystem (a blkid process).
func (s *Server) blank(ctx context.Context, v *backend.Volume) bool {
	bc, ok := s.be.(blankChecker)
	if !ok {
		return false
	}
	blank, err := bc.Blank(ctx, v)
	return err == nil && blank
}

// growUnmounted grows a filesystem that is smaller than its device before
// it is mounted, where the filesystem allows it. A failure leaves the
// filesystem as it was, still usable, so it is logged, not returned.
func (s *Server) growUnmounted(dev string, v *backend.Volume) {
	need, err := s.mounter.NeedsResize(dev, v.FsType)
	if err == nil && need {
		_, err = s.mounter.ResizeUnmounted(dev, v.FsType)
	}
	if err != nil {
		s.cfg.Log.Warn("filesystem not grown before mount", "volume", v.ID, "device", dev, "error", err)
	}
}

// grow resizes a mounted filesystem when its device is larger than it.
func (s *Server) grow(dev, mountPath, fsType string) error {
	need, err := s.mounter.NeedsResize(dev, fsType)
	if err != nil || !need {
		return err
	}
	if err := s.mounter.Resize(dev, mountPath, fsType); err != nil {
		return fmt.Errorf("grow filesystem on %s: %w", dev, err)
	}
	return nil
}

// NodeUnstageVolume implements csi.NodeServer. After Swarm's last unpublish
// the volume is released already and this is a no-op.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	staging, release, err := s.lockRequest(req.GetVolumeId(), "staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := s.state.load(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if st != nil {
		for _, t := range st.Targets {
			if mounted, _ := s.mounter.IsMountPoint(t); mounted {
				return nil, csierr.Precondition("volume %s is still published at %s", st.VolumeID, t)
			}
		}
		staging = st.StagingPath
	}
	if err := s.release(ctx, req.GetVolumeId(), staging); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// release unmounts the staging path, detaches the device and forgets the
// volume. Every step tolerates having been done already.
func (s *Server) release(ctx context.Context, volumeID, staging string) error {
	if err := s.unmountStaging(ctx, volumeID, staging); err != nil {
		return err
	}
	// A directory that still holds files is left in place.
	if err := removePath(staging); err != nil && !errors.Is(err, unix.ENOTEMPTY) {
		return err
	}
	if err := s.be.Detach(ctx, volumeID); err != nil {
		return err
	}
	return s.state.remove(volumeID)
}
