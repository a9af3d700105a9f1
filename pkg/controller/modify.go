package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// checkMutable checks mutable parameter names; the backend checks values.
func (s *Server) checkMutable(params map[string]string) error {
	if len(params) == 0 {
		return nil
	}
	if s.modifier == nil {
		return csierr.Invalid("the %s backend has no mutable parameters", s.info.Name)
	}
	known := s.modifier.MutableParameters()
	for k := range params {
		if !slices.Contains(known, k) {
			return csierr.Invalid("mutable parameter %q is not supported; the %s backend accepts: %s",
				k, s.info.Name, strings.Join(known, ", "))
		}
	}
	return nil
}

// ControllerModifyVolume implements csi.ControllerServer.
func (s *Server) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if err := s.require(s.modifier != nil, "mutable parameters"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	if err := s.checkMutable(req.GetMutableParameters()); err != nil {
		return nil, err
	}
	release, err := s.lock(volumeKey(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer release()
	if len(req.GetMutableParameters()) == 0 {
		// Nothing to change: done, once the volume is found to exist.
		if _, err := s.be.Volume(ctx, req.GetVolumeId()); err != nil {
			return nil, err
		}
		return &csi.ControllerModifyVolumeResponse{}, nil
	}
	if err := s.modifier.ModifyVolume(ctx, req.GetVolumeId(), maps.Clone(req.GetMutableParameters())); err != nil {
		return nil, err
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// checkTopology refuses requisite topologies the backend cannot serve.
func (s *Server) checkTopology(r *csi.TopologyRequirement) error {
	if len(r.GetRequisite()) == 0 || len(s.info.Topology) == 0 {
		return nil
	}
	for _, t := range r.GetRequisite() {
		ok := true
		for k, v := range t.GetSegments() {
			ok = ok && s.info.Topology[k] == v
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("%w: the volume can only be made where its storage is, topology %v, which no requisite topology names", csierr.ErrResourceExhausted, s.info.Topology)
}
