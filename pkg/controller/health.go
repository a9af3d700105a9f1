package controller

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// volumeHealth turns the backend's view of a volume into CSI health: the
// volume condition of CSI 1.13.
func (s *Server) volumeHealth(ctx context.Context, v *backend.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	if c := s.be.Condition(ctx, v); c.Abnormal {
		h.HealthStatuses = []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "StorageMissing", Message: c.Message}}
	}
	return h
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (s *Server) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: s.volumeHealth(ctx, v)}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer: the abnormal
// volumes among a page of volumes.
func (s *Server) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	vols, next, err := s.pageVolumes(ctx, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, v := range vols {
		if h := s.volumeHealth(ctx, v); len(h.HealthStatuses) > 0 {
			resp.Entries = append(resp.Entries, h)
		}
	}
	return resp, nil
}
