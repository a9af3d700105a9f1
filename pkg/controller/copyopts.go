package controller

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// copyOption turns the parameters cloneFrom and fromSnapshot into the
// content source Swarm cannot send, or nil when neither is given. Each
// names its source by id or by name (the Swarm volume name, which Swarm
// passes as the CSI name).
func (s *Server) copyOption(ctx context.Context, params map[string]string) (*csi.VolumeContentSource, error) {
	vol, hasVol := params[paramCloneFrom]
	snap, hasSnap := params[paramFromSnapshot]
	switch {
	case hasVol && hasSnap:
		return nil, csierr.Invalid("parameters %s and %s exclude each other", paramCloneFrom, paramFromSnapshot)
	case hasVol:
		if s.cloner == nil {
			return nil, csierr.Invalid("parameter %s: the %s backend cannot copy volumes", paramCloneFrom, s.info.Name)
		}
		if vol == "" {
			return nil, csierr.Invalid("parameter %s is empty: name a volume", paramCloneFrom)
		}
		id, err := s.volumeIDOf(ctx, vol)
		if err != nil {
			return nil, err
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}, nil
	case hasSnap:
		if s.snaps == nil || s.cloner == nil {
			return nil, csierr.Invalid("parameter %s: the %s backend makes no volumes from snapshots", paramFromSnapshot, s.info.Name)
		}
		if snap == "" {
			return nil, csierr.Invalid("parameter %s is empty: name a snapshot", paramFromSnapshot)
		}
		id, err := s.snapshotIDOf(ctx, snap)
		if err != nil {
			return nil, err
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}, nil
	}
	return nil, nil
}

// volumeIDOf resolves a volume id or name to its id.
func (s *Server) volumeIDOf(ctx context.Context, ref string) (string, error) {
	byName := listed(s.be.ListVolumes, func(v *backend.Volume) string { return v.Name })
	if f, ok := s.be.(backend.NameFinder); ok {
		byName = f.VolumeNamed
	}
	return resolve(ctx, ref, s.be.Volume, byName, func(v *backend.Volume) string { return v.ID },
		csierr.NotFound("%s=%s: no volume of the %s backend has that name or id (a volume of another driver cannot be copied)", paramCloneFrom, ref, s.info.Name))
}

// snapshotIDOf resolves a snapshot id or name to its id.
func (s *Server) snapshotIDOf(ctx context.Context, ref string) (string, error) {
	byName := listed(s.snaps.ListSnapshots, func(sn *backend.Snapshot) string { return sn.Name })
	if f, ok := s.be.(backend.NameFinder); ok {
		byName = f.SnapshotNamed
	}
	return resolve(ctx, ref, s.snaps.Snapshot, byName, func(sn *backend.Snapshot) string { return sn.ID },
		csierr.NotFound("%s=%s: no snapshot of the %s backend has that name or id", paramFromSnapshot, ref, s.info.Name))
}

// resolve finds ref as an id (get), else as a name (byName); notFound is
// the error when neither knows it.
func resolve[T any](ctx context.Context, ref string, get, byName func(context.Context, string) (T, error),
	id func(T) string, notFound error) (string, error) {
	x, err := get(ctx, ref)
	if errors.Is(err, csierr.ErrNotFound) {
		x, err = byName(ctx, ref)
		if errors.Is(err, csierr.ErrNotFound) {
			return "", notFound
		}
	}
	if err != nil {
		return "", err
	}
	return id(x), nil
}

// listed finds by name among all that list returns: for a backend that
// cannot look a name up.
func listed[T any](list func(context.Context) ([]T, error), name func(T) string) func(context.Context, string) (T, error) {
	return func(ctx context.Context, ref string) (T, error) {
		var none T
		all, err := list(ctx)
		if err != nil {
			return none, err
		}
		for _, x := range all {
			if name(x) == ref {
				return x, nil
			}
		}
		return none, csierr.NotFound("nothing is named %q", ref)
	}
}
