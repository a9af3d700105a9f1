package controller

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// ControllerExpandVolume implements csi.ControllerServer. The node grows the
// filesystem afterwards: through NodeExpandVolume, or at the next stage,
// since Swarm never calls NodeExpandVolume (docs/swarm.md, "What Swarm
// never calls").
func (s *Server) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if err := s.require(s.expander != nil, "volume expansion"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, csierr.Invalid("capacity_range is required")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := volcap.Check(c); err != nil {
			return nil, err
		}
	}
	release, err := s.lock(volumeKey(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	// No required size asks for no growth, not for the default size.
	size := v.CapacityBytes
	if req.GetCapacityRange().GetRequiredBytes() > 0 {
		if size, err = s.sizeFor(req.GetCapacityRange(), volcap.FsTypes[v.FsType]); err != nil {
			return nil, err
		}
	}
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && v.CapacityBytes > lim {
		return nil, fmt.Errorf("%w: volume is %d bytes already, above limit_bytes %d; volumes do not shrink", csierr.ErrOutOfRange, v.CapacityBytes, lim)
	}
	if size, err = s.expander.ExpandVolume(ctx, v.ID, size); err != nil {
		return nil, err
	}
	// Block volumes need the node too: the loop device must see the new size.
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: true}, nil
}
