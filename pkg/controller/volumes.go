package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// CreateVolume implements csi.ControllerServer. It is idempotent by name:
// Swarm sends the bare volume name the user typed (docs/swarm.md,
// "CreateVolume").
func (s *Server) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (_ *csi.CreateVolumeResponse, err error) {
	defer func() { s.createErrs.note(req, err) }()
	if req.GetName() == "" {
		return nil, csierr.Invalid("name is required")
	}
	fsParam, mkfs, mountOpts, rest, err := s.splitParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	block, fs, mode, err := s.accessOf(req.GetVolumeCapabilities(), fsParam)
	if err != nil {
		return nil, err
	}
	if block && mountOpts != "" {
		return nil, csierr.Invalid("parameter %s applies to mount volumes, not block ones", paramMountOptions)
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := s.checkSingleNode(c.GetAccessMode().GetMode()); err != nil {
			return nil, err
		}
	}
	if err := s.checkMutable(req.GetMutableParameters()); err != nil {
		return nil, err
	}
	if err := s.checkTopology(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	spec := backend.VolumeSpec{
		Name:              req.GetName(),
		FsType:            fs,
		MkfsOptions:       mkfs,
		MountOptions:      mountOpts,
		Block:             block,
		AccessMode:        volcap.ModeName(mode),
		Parameters:        rest,
		MutableParameters: req.GetMutableParameters(),
	}
	keys := []string{volumeNameKey(spec.Name)}
	srcSize := int64(0)
	src := req.GetVolumeContentSource()
	if spec.Root, err = rootDir(req.GetParameters(), block, src != nil); err != nil {
		return nil, err
	}
	if opt, err := s.copyOption(ctx, req.GetParameters()); err != nil {
		return nil, err
	} else if opt != nil {
		if src != nil {
			return nil, csierr.Invalid("parameters %s and %s cannot be given with a volume content source", paramCloneFrom, paramFromSnapshot)
		}
		src = opt
	}
	if src != nil {
		var srcFs string
		spec.Source, srcSize, srcFs, err = s.source(ctx, src)
		if err != nil {
			return nil, err
		}
		if !block && srcFs != "" && fsParam == "" && req.GetVolumeCapabilities()[0].GetMount().GetFsType() == "" {
			spec.FsType = srcFs // a copy keeps its source's filesystem
		}
		if !block && srcFs != "" && spec.FsType != srcFs {
			return nil, csierr.Invalid("fsType %q differs from the %q filesystem of the content source", spec.FsType, srcFs)
		}
		if spec.Source.VolumeID != "" {
			keys = append(keys, volumeKey(spec.Source.VolumeID))
		} else {
			keys = append(keys, snapshotKey(spec.Source.SnapshotID))
		}
	}
	minSize := max(volcap.FsTypes[spec.FsType], srcSize)
	if spec.CapacityBytes, err = s.sizeFor(req.GetCapacityRange(), minSize); err != nil {
		return nil, err
	}

	release, err := s.lock(keys...)
	if err != nil {
		return nil, err
	}
	defer release()
	create := s.be.CreateVolume
	if spec.Source != nil {
		create = s.cloner.CreateVolumeFrom // not nil: source and copyOption saw to it
	}
	v, err := create(ctx, spec)
	if err != nil {
		return nil, err
	}
	if why := sameVolume(v, spec, req.GetCapacityRange()); why != "" {
		return nil, fmt.Errorf("%w: volume %q exists with other arguments: %s", csierr.ErrAlreadyExists, spec.Name, why)
	}
	return &csi.CreateVolumeResponse{Volume: s.csiVolume(v)}, nil
}

// source resolves a content source to the backend's form, the source's size
// and its filesystem ("" when unknown).
func (s *Server) source(ctx context.Context, src *csi.VolumeContentSource) (*backend.Source, int64, string, error) {
	if snap := src.GetSnapshot(); snap != nil {
		if err := s.require(s.snaps != nil && s.cloner != nil, "volumes from snapshots"); err != nil {
			return nil, 0, "", err
		}
		sn, err := s.snaps.Snapshot(ctx, snap.GetSnapshotId())
		if err != nil {
			return nil, 0, "", err
		}
		return &backend.Source{SnapshotID: sn.ID}, sn.SizeBytes, sn.FsType, nil
	}
	if vol := src.GetVolume(); vol != nil {
		if err := s.require(s.cloner != nil, "volume clones"); err != nil {
			return nil, 0, "", err
		}
		v, err := s.be.Volume(ctx, vol.GetVolumeId())
		if err != nil {
			return nil, 0, "", err
		}
		return &backend.Source{VolumeID: v.ID}, v.CapacityBytes, v.FsType, nil
	}
	return nil, 0, "", csierr.Invalid("content source must name a snapshot or a volume")
}

// csiVolume converts a backend volume to its CSI form.
func (s *Server) csiVolume(v *backend.Volume) *csi.Volume {
	out := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.CapacityBytes, VolumeContext: volumeContext(v)}
	if s.info.SharedFilesystem {
		if !s.info.Quota {
			// The size is recorded, and shown, but nothing holds the
			// volume to it.
			out.VolumeContext["capacity"] = "not enforced"
		}
		delete(out.VolumeContext, "fsType")
	}
	if len(s.info.Topology) > 0 {
		out.AccessibleTopology = []*csi.Topology{{Segments: s.info.Topology}}
	}
	switch {
	case v.Source == nil:
	case v.Source.SnapshotID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.Source.SnapshotID}}}
	case v.Source.VolumeID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.Source.VolumeID}}}
	}
	return out
}

// volumeContext is passed to every node call; the node also reads the same
// facts from the backend, since a CO may not pass it along.
func volumeContext(v *backend.Volume) map[string]string {
	ctx := map[string]string{"accessMode": v.AccessMode}
	if v.Block {
		ctx["accessType"] = "block"
	} else {
		ctx["accessType"] = "mount"
		ctx["fsType"] = v.FsType
	}
	if v.Root != nil {
		maps.Copy(ctx, v.Root.Parameters())
	}
	return ctx
}

// DeleteVolume implements csi.ControllerServer.
func (s *Server) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	release, err := s.lockVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := s.be.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ListVolumes implements csi.ControllerServer.
func (s *Server) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, next, err := s.pageVolumes(ctx, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: s.csiVolume(v), Status: &csi.ListVolumesResponse_VolumeStatus{
			PublishedNodeIds: nodeIDs(v),
		}})
	}
	return resp, nil
}

// pageVolumes returns one page of the backend's volumes: read alone where
// the backend can, else cut from a listing of them all.
func (s *Server) pageVolumes(ctx context.Context, token string, maxEntries int32) ([]*backend.Volume, string, error) {
	after, err := pageArgs(token, maxEntries)
	if err != nil {
		return nil, "", err // before listing: bad arguments cost nothing
	}
	id := func(v *backend.Volume) string { return v.ID }
	if p, ok := s.be.(backend.VolumePager); ok {
		vols, more, err := p.VolumesPage(ctx, after, int(maxEntries))
		return vols, nextToken(vols, more, id), err
	}
	vols, err := s.be.ListVolumes(ctx)
	if err != nil {
		return nil, "", err
	}
	return page(vols, id, token, maxEntries)
}

// ControllerGetVolume implements csi.ControllerServer.
func (s *Server) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{Volume: s.csiVolume(v), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{
		PublishedNodeIds: nodeIDs(v),
	}}, nil
}

func nodeIDs(v *backend.Volume) []string {
	ids := make([]string, 0, len(v.Attachments))
	for _, a := range v.Attachments {
		ids = append(ids, a.NodeID)
	}
	return ids
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (s *Server) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, csierr.Invalid("volume_capabilities are required")
	}
	v, err := s.be.Volume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if why := s.unsupported(v, req.GetVolumeCapabilities()); why != "" {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: why}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// unsupported explains why a volume cannot serve the capabilities, or "".
func (s *Server) unsupported(v *backend.Volume, caps []*csi.VolumeCapability) string {
	for _, c := range caps {
		if err := errors.Join(volcap.Check(c), volcap.CheckShared(c, s.info.SharedFilesystem), s.checkSingleNode(c.GetAccessMode().GetMode())); err != nil {
			return err.Error()
		}
		if volcap.IsBlock(c) != v.Block {
			return "the volume was created for the other access type (block or mount)"
		}
		if f := c.GetMount().GetFsType(); f != "" && f != v.FsType {
			return fmt.Sprintf("the volume's filesystem is %q, not %q", v.FsType, f)
		}
	}
	return ""
}

// GetCapacity implements csi.ControllerServer.
func (s *Server) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if err := s.require(s.capacity != nil, "capacity figure"); err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := volcap.Check(c); err != nil {
			return nil, err
		}
	}
	if _, _, _, _, err := s.splitParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	avail, err := s.capacity.Capacity(ctx)
	if err != nil {
		return nil, err
	}
	resp := &csi.GetCapacityResponse{AvailableCapacity: avail, MinimumVolumeSize: wrapInt(s.info.MinSize)}
	if s.info.MaxSize > 0 {
		resp.MaximumVolumeSize = wrapInt(s.info.MaxSize)
	}
	return resp, nil
}

// VolumeCounts counts the backend's volumes by state, for the metrics:
// "published" (to at least one node) and "unpublished".
func (s *Server) VolumeCounts(ctx context.Context) (map[string]int, error) {
	vols, err := s.be.ListVolumes(ctx)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{"published": 0, "unpublished": 0}
	for _, v := range vols {
		if len(v.Attachments) > 0 {
			counts["published"]++
		} else {
			counts["unpublished"]++
		}
	}
	return counts, nil
}
