package node

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// NodeExpandVolume implements csi.NodeServer: the device is made to see the
// volume's new size, then the filesystem grows online.
func (s *Server) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, csierr.Invalid("volume_path is required")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := volcap.Check(c); err != nil {
			return nil, err
		}
	}
	release, err := s.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	path, err := cleanPath("volume_path", req.GetVolumePath())
	if err != nil {
		return nil, csierr.NotFound("volume %s cannot be at %s: %v", v.ID, req.GetVolumePath(), err)
	}
	if p := s.probe(ctx, v.ID, path); p.problem != nil {
		return nil, csierr.NotFound("volume %s at %s: %s", v.ID, path, p.problem.GetMessage())
	}
	if s.filesystem() != nil {
		return &csi.NodeExpandVolumeResponse{}, nil // a directory: nothing to grow
	}
	// Attach on an attached volume refreshes the device's size.
	dev, err := s.be.Attach(ctx, v, nil)
	if err != nil {
		return nil, err
	}
	if !v.Block {
		if err := s.grow(dev, path, v.FsType); err != nil {
			return nil, err
		}
	}
	size, err := blockdev.Size(dev)
	if err != nil {
		return nil, err
	}
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && size > lim {
		return nil, fmt.Errorf("%w: volume is %d bytes, above limit_bytes %d", csierr.ErrOutOfRange, size, lim)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}
