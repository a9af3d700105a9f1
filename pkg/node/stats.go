package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// NodeGetVolumeStats implements csi.NodeServer: bytes and inodes of a
// mounted volume, the size of a block volume. A volume whose mount or
// device is gone is NotFound at that path, with the reason; its condition
// is reported by NodeGetVolumeHealth.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := requireVolumePath(req.GetVolumeId(), req.GetVolumePath()); err != nil {
		return nil, err
	}
	v, path, p, err := s.volumeAt(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	if v.Block {
		size, err := blockdev.Size(p.device)
		if err != nil {
			return nil, err
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	bytes, inodes, err := s.volumeStats(ctx, path)
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{bytes, inodes}}, nil
}

// requireVolumePath refuses a request that leaves out the volume's id or
// its path.
func requireVolumePath(volumeID, volumePath string) error {
	switch {
	case volumeID == "":
		return csierr.Invalid("volume_id is required")
	case volumePath == "":
		return csierr.Invalid("volume_path is required")
	}
	return nil
}

// volumeAt looks the volume up and probes it at volumePath. A path that
// cannot be the volume's, or where the volume is not mounted or attached,
// is NotFound, with the reason.
func (s *Server) volumeAt(ctx context.Context, volumeID, volumePath string) (*backend.Volume, string, probed, error) {
	v, err := s.be.Volume(ctx, volumeID)
	if err != nil {
		return nil, "", probed{}, err
	}
	path, err := cleanPath("volume_path", volumePath)
	if err != nil {
		return nil, "", probed{}, csierr.NotFound("volume %s cannot be at %s: %v", v.ID, volumePath, err)
	}
	p := s.probe(ctx, v.ID, path)
	if p.problem != nil {
		return nil, "", probed{}, csierr.NotFound("volume %s at %s: %s", v.ID, path, p.problem.GetMessage())
	}
	return v, path, p, nil
}

// volumeStats is the size and use of the mounted volume at path: from the
// backend where it measures its volumes itself (a CephFS quota), else
// from statfs.
func (s *Server) volumeStats(ctx context.Context, path string) (bytes, inodes *csi.VolumeUsage, err error) {
	ur, ok := s.be.(backend.UsageReporter)
	if !ok {
		return fsStats(path)
	}
	u, err := ur.Usage(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	bytes = &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: u.CapacityBytes, Used: u.UsedBytes, Available: max(u.CapacityBytes-u.UsedBytes, 0)}
	inodes = &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: u.MaxFiles, Used: u.Files}
	if u.MaxFiles > 0 {
		inodes.Available = max(u.MaxFiles-u.Files, 0)
	}
	return bytes, inodes, nil
}

// fsStats is the size and use of the filesystem at path: bytes (available
// to an unprivileged writer) and inodes.
func fsStats(path string) (bytes, inodes *csi.VolumeUsage, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := st.Bsize
	return &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		&csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)}, nil
}

// probed is what probe found of a volume on this node.
type probed struct {
	device  string
	problem *csi.VolumeHealth_VolumeHealthEntry // nil when healthy
}

// probe checks that each of paths exists and is mounted, then that the
// volume's device is attached; it reports the first problem.
func (s *Server) probe(ctx context.Context, volumeID string, paths ...string) probed {
	for _, path := range paths {
		if s.filesystem() != nil {
			if err := deadMount(path); err != nil {
				return inaccessible("MountDead", "the filesystem's client is gone: %v", err)
			}
		}
		mounted, err := s.mounter.IsMountPoint(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return inaccessible("PathMissing", "%s does not exist", path)
		case err != nil:
			return inaccessible("PathUnreadable", "%s: %v", path, err)
		case !mounted:
			return inaccessible("NotMounted", "%s is not mounted", path)
		}
	}
	if fs := s.filesystem(); fs != nil {
		return probeDirectory(ctx, fs, volumeID)
	}
	dev, err := s.be.Device(ctx, volumeID)
	switch {
	case err != nil:
		return inaccessible("DeviceUnknown", "looking for the device: %v", err)
	case dev == "":
		return inaccessible("DeviceDetached", "the volume's device is not attached on this node")
	}
	return probed{device: dev}
}

func inaccessible(reason, format string, args ...any) probed {
	return probed{problem: &csi.VolumeHealth_VolumeHealthEntry{
		Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: fmt.Sprintf(format, args...)}}
}

// NodeGetVolumeHealth implements csi.NodeServer: the volume's device must be
// attached, and its staging and published paths mounted.
func (s *Server) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, f := range []struct{ field, path string }{
		{"staging_target_path", req.GetStagingTargetPath()}, {"volume_publish_path", req.GetVolumePublishPath()},
	} {
		if f.path == "" {
			continue
		}
		c, err := cleanPath(f.field, f.path)
		if err != nil {
			return nil, err
		}
		if !(v.Block && f.field == "staging_target_path") {
			paths = append(paths, c)
		}
	}
	h := &csi.VolumeHealth{VolumeId: v.ID}
	if pr := s.probe(ctx, v.ID, paths...); pr.problem != nil {
		h.HealthStatuses = append(h.HealthStatuses, pr.problem)
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeGetStorageHealth implements csi.NodeServer.
func (s *Server) NodeGetStorageHealth(ctx context.Context, _ *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	if err := s.be.Health(ctx); err != nil {
		resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "BackendUnreachable", Message: err.Error()})
	}
	return resp, nil
}
