package controller

import (
	"context"
	"fmt"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateSnapshot implements csi.ControllerServer, idempotent by name.
func (s *Server) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := s.require(s.snaps != nil, "snapshots"); err != nil {
		return nil, err
	}
	switch {
	case req.GetName() == "":
		return nil, csierr.Invalid("name is required")
	case req.GetSourceVolumeId() == "":
		return nil, csierr.Invalid("source_volume_id is required")
	case len(req.GetParameters()) > 0:
		return nil, csierr.Invalid("snapshots take no parameters")
	}
	release, err := s.lock(snapshotNameKey(req.GetName()), volumeKey(req.GetSourceVolumeId()))
	if err != nil {
		return nil, err
	}
	defer release()
	spec := backend.SnapshotSpec{Name: req.GetName(), SourceVolumeID: req.GetSourceVolumeId()}
	// A missing source is the backend's to report: a retry for a snapshot
	// that exists must still succeed.
	if src, err := s.be.Volume(ctx, spec.SourceVolumeID); err == nil {
		spec.FsType = src.FsType
	} else if csierr.Code(err) != csierr.Code(csierr.ErrNotFound) {
		return nil, err
	}
	sn, err := s.snaps.CreateSnapshot(ctx, spec)
	if err != nil {
		return nil, err
	}
	if sn.SourceVolumeID != req.GetSourceVolumeId() {
		return nil, fmt.Errorf("%w: snapshot %q exists for another volume, %s", csierr.ErrAlreadyExists, req.GetName(), sn.SourceVolumeID)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// requireSnapshot refuses a call on a snapshot, or a group of them, when
// the backend has no snapshots or the request leaves field, the id it is
// about, empty.
func (s *Server) requireSnapshot(field, id string) error {
	if err := s.require(s.snaps != nil, "snapshots"); err != nil {
		return err
	}
	if id == "" {
		return csierr.Invalid("%s is required", field)
	}
	return nil
}

func csiSnapshot(sn *backend.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:      sn.ID,
		SourceVolumeId:  sn.SourceVolumeID,
		SizeBytes:       sn.SizeBytes,
		CreationTime:    timestamppb.New(sn.CreatedAt),
		ReadyToUse:      true,
		GroupSnapshotId: sn.GroupID,
	}
}

// GetSnapshot implements csi.ControllerServer.
func (s *Server) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if err := s.requireSnapshot("snapshot_id", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	sn, err := s.snaps.Snapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// DeleteSnapshot implements csi.ControllerServer.
func (s *Server) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if err := s.requireSnapshot("snapshot_id", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	release, err := s.lock(snapshotKey(req.GetSnapshotId()))
	if err != nil {
		return nil, err
	}
	defer release()
	if err := s.snaps.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots implements csi.ControllerServer.
func (s *Server) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if err := s.require(s.snaps != nil, "snapshots"); err != nil {
		return nil, err
	}
	after, err := pageArgs(req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	keep := func(*backend.Snapshot) bool { return true }
	if src := req.GetSourceVolumeId(); src != "" {
		keep = func(sn *backend.Snapshot) bool { return sn.SourceVolumeID == src }
	}
	id := func(sn *backend.Snapshot) string { return sn.ID }
	var snaps []*backend.Snapshot
	switch p, paged := s.snaps.(backend.SnapshotPager); {
	case req.GetSnapshotId() != "":
		// An id, or the name the snapshot was created with: CSI has no
		// name in a listing, and operators name snapshots (swarm-csi
		// snapshot rm NAME).
		snapID, err := s.snapshotIDOf(ctx, req.GetSnapshotId())
		if err != nil {
			return &csi.ListSnapshotsResponse{}, ignoreNotFound(err)
		}
		sn, err := s.snaps.Snapshot(ctx, snapID)
		if err != nil {
			return &csi.ListSnapshotsResponse{}, ignoreNotFound(err)
		}
		snaps = []*backend.Snapshot{sn}
	case paged:
		page, more, err := p.SnapshotsPage(ctx, after, int(req.GetMaxEntries()), keep)
		if err != nil {
			return nil, err
		}
		return snapshotsResponse(page, nextToken(page, more, id)), nil
	default:
		if snaps, err = s.snaps.ListSnapshots(ctx); err != nil {
			return nil, err
		}
	}
	snaps = slices.DeleteFunc(snaps, func(sn *backend.Snapshot) bool { return !keep(sn) })
	snaps, next, err := page(snaps, id, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	return snapshotsResponse(snaps, next), nil
}

func snapshotsResponse(snaps []*backend.Snapshot, next string) *csi.ListSnapshotsResponse {
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(sn)})
	}
	return resp
}
