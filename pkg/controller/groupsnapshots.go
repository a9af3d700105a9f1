package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// A volume group snapshot is a set of snapshots, one per source volume,
// that carry the group's id and its sorted list of sources. The snapshots
// are taken one after another: each is crash-consistent on its own, the
// group is not a single point in time.

// GroupControllerGetCapabilities implements csi.GroupControllerServer.
// Without snapshots the service has nothing to offer (and is not advertised).
func (s *Server) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	if s.snaps == nil {
		return &csi.GroupControllerGetCapabilitiesResponse{}, nil
	}
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

// groupID derives a group's id from its name, so a retry finds the group.
func groupID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "group-" + hex.EncodeToString(sum[:16])
}

// groupMembers returns the snapshots of a group, sorted by id.
func (s *Server) groupMembers(ctx context.Context, id string) ([]*backend.Snapshot, error) {
	all, err := s.snaps.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var members []*backend.Snapshot
	for _, sn := range all {
		if sn.GroupID == id {
			members = append(members, sn)
		}
	}
	return members, nil
}

// CreateVolumeGroupSnapshot implements csi.GroupControllerServer,
// idempotent by name; a retry after a partial attempt completes the group.
func (s *Server) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if err := s.require(s.snaps != nil, "snapshots"); err != nil {
		return nil, err
	}
	switch {
	case req.GetName() == "":
		return nil, csierr.Invalid("name is required")
	case len(req.GetSourceVolumeIds()) == 0:
		return nil, csierr.Invalid("source_volume_ids are required")
	case len(req.GetParameters()) > 0:
		return nil, csierr.Invalid("group snapshots take no parameters")
	}
	sources := slices.Clone(req.GetSourceVolumeIds())
	slices.Sort(sources)
	if slices.Contains(sources, "") || len(slices.Compact(slices.Clone(sources))) != len(sources) {
		return nil, csierr.Invalid("source_volume_ids must be distinct and not empty")
	}
	id := groupID(req.GetName())
	keys := []string{snapshotNameKey(id)}
	for _, v := range sources {
		keys = append(keys, volumeKey(v))
	}
	release, err := s.lock(keys...)
	if err != nil {
		return nil, err
	}
	defer release()
	existing, err := s.groupMembers(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(existing) > 0 && !slices.Equal(existing[0].GroupSources, sources) {
		return nil, fmt.Errorf("%w: group snapshot %q exists for other volumes", csierr.ErrAlreadyExists, req.GetName())
	}
	fsTypes := make([]string, len(sources))
	for i, v := range sources {
		vol, err := s.be.Volume(ctx, v)
		if err != nil {
			return nil, err
		}
		fsTypes[i] = vol.FsType
	}
	members := make([]*backend.Snapshot, 0, len(sources))
	for i, v := range sources {
		sn, err := s.snaps.CreateSnapshot(ctx, backend.SnapshotSpec{
			Name: id + "/" + v, SourceVolumeID: v, FsType: fsTypes[i], GroupID: id, GroupSources: sources,
		})
		if err != nil {
			return nil, err
		}
		members = append(members, sn)
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: groupSnapshot(id, members)}, nil
}

func groupSnapshot(id string, members []*backend.Snapshot) *csi.VolumeGroupSnapshot {
	g := &csi.VolumeGroupSnapshot{GroupSnapshotId: id, ReadyToUse: true}
	for _, sn := range members {
		g.Snapshots = append(g.Snapshots, csiSnapshot(sn))
		if t := timestamppb.New(sn.CreatedAt); g.CreationTime == nil || t.AsTime().After(g.CreationTime.AsTime()) {
			g.CreationTime = t
		}
	}
	return g
}

// checkMembers refuses a request whose snapshot ids are not the group's:
// the spec's "snapshot list mismatch", INVALID_ARGUMENT. Ids in gone are
// left out: a retried delete names the members an earlier attempt removed.
func checkMembers(members []*backend.Snapshot, ids []string, gone map[string]bool) error {
	if len(ids) == 0 {
		return nil
	}
	have := make([]string, len(members))
	for i, sn := range members {
		have[i] = sn.ID
	}
	var want []string
	for _, id := range ids {
		if !gone[id] {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(have, want) {
		return csierr.Invalid("snapshot_ids %v are not the members of the group, %v", ids, have)
	}
	return nil
}

// DeleteVolumeGroupSnapshot implements csi.GroupControllerServer.
func (s *Server) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	if err := s.requireSnapshot("group_snapshot_id", req.GetGroupSnapshotId()); err != nil {
		return nil, err
	}
	release, err := s.lock(snapshotNameKey(req.GetGroupSnapshotId()))
	if err != nil {
		return nil, err
	}
	defer release()
	members, err := s.groupMembers(ctx, req.GetGroupSnapshotId())
	if err != nil {
		return nil, err
	}
	// snapshot_ids is required, so every retry sends it: after a delete
	// that was cut short, or whose answer was lost, some or all of them
	// are gone, and the spec wants OK for what no longer exists.
	gone := map[string]bool{}
	for _, id := range req.GetSnapshotIds() {
		if _, err := s.snaps.Snapshot(ctx, id); err != nil {
			if err := ignoreNotFound(err); err != nil {
				return nil, err
			}
			gone[id] = true
		}
	}
	if err := checkMembers(members, req.GetSnapshotIds(), gone); err != nil {
		return nil, err
	}
	for _, sn := range members {
		if err := s.snaps.DeleteSnapshot(ctx, sn.ID); err != nil {
			return nil, err
		}
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// GetVolumeGroupSnapshot implements csi.GroupControllerServer.
func (s *Server) GetVolumeGroupSnapshot(ctx context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	if err := s.requireSnapshot("group_snapshot_id", req.GetGroupSnapshotId()); err != nil {
		return nil, err
	}
	members, err := s.groupMembers(ctx, req.GetGroupSnapshotId())
	if err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return nil, csierr.NotFound("group snapshot %q does not exist", req.GetGroupSnapshotId())
	}
	if err := checkMembers(members, req.GetSnapshotIds(), nil); err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: groupSnapshot(req.GetGroupSnapshotId(), members)}, nil
}
