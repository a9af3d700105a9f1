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
	if err := requireVolumePath(req.GetVolumeId(), req.GetVolumePath()); err != nil {
		return nil, err
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
	v, path, _, err := s.volumeAt(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, err
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
