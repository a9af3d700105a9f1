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
	return resolve(ctx, ref, s.be.Volume, s.be.ListVolumes, func(v *backend.Volume) (string, string) { return v.ID, v.Name },
		csierr.NotFound("%s=%s: no volume of the %s backend has that name or id (a volume of another driver cannot be copied)", paramCloneFrom, ref, s.info.Name))
}

// snapshotIDOf resolves a snapshot id or name to its id.
func (s *Server) snapshotIDOf(ctx context.Context, ref string) (string, error) {
	return resolve(ctx, ref, s.snaps.Snapshot, s.snaps.ListSnapshots, func(sn *backend.Snapshot) (string, string) { return sn.ID, sn.Name },
		csierr.NotFound("%s=%s: no snapshot of the %s backend has that name or id", paramFromSnapshot, ref, s.info.Name))
}

// resolve finds ref as an id (get), else as a name among all (list);
// notFound is the error when neither knows it.
func resolve[T any](ctx context.Context, ref string, get func(context.Context, string) (T, error),
	list func(context.Context) ([]T, error), idName func(T) (string, string), notFound error) (string, error) {
	x, err := get(ctx, ref)
	if err == nil {
		id, _ := idName(x)
		return id, nil
	}
	if !errors.Is(err, csierr.ErrNotFound) {
		return "", err
	}
	all, err := list(ctx)
	if err != nil {
		return "", err
	}
	for _, x := range all {
		if id, name := idName(x); name == ref {
			return id, nil
		}
	}
	return "", notFound
}
