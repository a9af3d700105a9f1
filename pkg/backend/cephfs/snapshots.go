package cephfs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateSnapshot implements backend.Snapshotter: a CephFS snapshot of the
// subvolume, named after the snapshot's id. It is ready at once.
func (b *Backend) CreateSnapshot(ctx context.Context, spec backend.SnapshotSpec) (*backend.Snapshot, error) {
	src, err := b.readReady(ctx, spec.SourceVolumeID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := b.call(ctx)
	defer cancel()
	id, s, err := recordFor(ctx, b, snapshotNameKey(spec.Name), "snap-", ValidSnapshotID, b.readSnapshot)
	if err != nil || s != nil {
		return s, err
	}
	if err := b.snapCreate(ctx, src.ID, id); err != nil {
		return nil, err
	}
	s = &backend.Snapshot{ID: id, SnapshotSpec: spec, SizeBytes: src.CapacityBytes, CreatedAt: b.now().UTC().Truncate(time.Second)}
	return s, b.putJSON(ctx, snapshotKey(id), s)
}

// DeleteSnapshot implements backend.Snapshotter. A snapshot that clones
// are still copied from is FailedPrecondition.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	if !ValidSnapshotID(id) {
		return nil
	}
	ctx, cancel := b.call(ctx)
	defer cancel()
	s, err := b.readSnapshot(ctx, id)
	if errors.Is(err, csierr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := b.snapRemove(ctx, s.SourceVolumeID, id); err != nil {
		return err
	}
	if err := b.deleteKey(ctx, snapshotKey(id)); err != nil {
		return err
	}
	return b.forgetName(ctx, snapshotNameKey(s.Name), id)
}

// Snapshot implements backend.Snapshotter.
func (b *Backend) Snapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	return b.readSnapshot(ctx, id)
}

// ListSnapshots implements backend.Snapshotter.
func (b *Backend) ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error) {
	return readAll(ctx, b, "snap.", b.readSnapshot)
}

// snapCreate takes snapshot snap of subvolume sub; one taken already is
// no error.
func (b *Backend) snapCreate(ctx context.Context, sub, snap string) error {
	if err := b.cl.SnapCreate(ctx, b.cfg.Group, sub, snap); err != nil && !isKind(err, KindExists) {
		return b.cephErr(err, "snapshot %s of subvolume %s", snap, sub)
	}
	return nil
}

// snapRemove removes snapshot snap of subvolume sub; one gone already is
// no error.
func (b *Backend) snapRemove(ctx context.Context, sub, snap string) error {
	if err := b.cl.SnapRemove(ctx, b.cfg.Group, sub, snap); err != nil && !isKind(err, KindNotFound) {
		return b.cephErr(err, "remove snapshot %s of subvolume %s", snap, sub)
	}
	return nil
}

// CreateVolumeFrom implements backend.Cloner: a CephFS clone of the
// snapshot, or of a snapshot taken of the source volume for it and removed
// once the clone completes. A clone takes seconds: the call waits for it
// up to CloneWait, then answers Aborted so that the caller retries; the
// volume exists (Volume, ListVolumes) only once its clone is complete. A
// clone that fails is removed, and the next call starts it again.
func (b *Backend) CreateVolumeFrom(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	if spec.Source == nil {
		return nil, csierr.Invalid("no content source")
	}
	src := *spec.Source
	spec.Root = nil // a copy keeps its source's root directory
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	var parent, snap string
	if src.SnapshotID != "" {
		s, err := b.Snapshot(ctx, src.SnapshotID)
		if err != nil {
			return nil, err
		}
		parent, snap = s.SourceVolumeID, s.ID
	} else {
		v, err := b.readReady(ctx, src.VolumeID)
		if err != nil {
			return nil, err
		}
		parent = v.ID
	}
	r, err := b.begin(ctx, spec, stateCloning)
	if err != nil || r.State == stateReady {
		return volumeOf(r), err
	}
	if r.State != stateCloning {
		return nil, csierr.Precondition("volume %s named %q is being made empty, not as a copy", r.ID, r.Name)
	}
	if err := b.startClone(ctx, r, parent, snap); err != nil {
		return nil, err
	}
	st, err := b.waitClone(ctx, r.ID)
	switch {
	case err != nil:
		return nil, err
	case st == cloneFailed || st == cloneCanceled:
		return nil, b.dropClone(ctx, r, st)
	case st != cloneComplete:
		return nil, errCloning(r.ID, st)
	}
	return b.finishClone(ctx, r)
}

// startClone takes the snapshot a copy of a volume needs and starts the
// clone, unless an earlier call did.
func (b *Backend) startClone(ctx context.Context, r *volumeRecord, parent, snap string) error {
	ctx, cancel := b.call(ctx)
	defer cancel()
	if snap == "" {
		if r.CloneSnap == "" {
			r.CloneSnap, r.CloneOf = "clone-"+r.ID, parent
			if err := b.putJSON(ctx, volumeKey(r.ID), r); err != nil {
				return err
			}
		}
		parent, snap = r.CloneOf, r.CloneSnap
		if err := b.snapCreate(ctx, parent, snap); err != nil {
			return err
		}
	}
	_, err := b.cl.CloneState(ctx, b.cfg.Group, r.ID)
	if !isKind(err, KindNotFound) {
		return b.cephErr(err, "clone %s", r.ID)
	}
	if err := b.cl.Clone(ctx, b.cfg.Group, parent, snap, r.ID); err != nil && !isKind(err, KindExists) {
		return b.cephErr(err, "clone snapshot %s of %s to %s", snap, parent, r.ID)
	}
	return nil
}

// waitClone polls the clone's state until it ends or CloneWait (or most
// of ctx's time) has passed.
func (b *Backend) waitClone(ctx context.Context, id string) (cloneState, error) {
	deadline := time.Now().Add(b.cfg.CloneWait)
	if d, ok := ctx.Deadline(); ok && d.Add(-time.Second).Before(deadline) {
		deadline = d.Add(-time.Second)
	}
	for {
		cctx, cancel := b.call(ctx)
		st, err := b.cl.CloneState(cctx, b.cfg.Group, id)
		cancel()
		if err != nil {
			return "", b.cephErr(err, "clone %s", id)
		}
		if st == cloneComplete || st == cloneFailed || st == cloneCanceled || time.Now().After(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// finishClone gives a complete clone the volume's quota, removes the
// snapshot taken for it and marks the volume ready.
func (b *Backend) finishClone(ctx context.Context, r *volumeRecord) (*backend.Volume, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	info, err := b.cl.Info(cctx, b.cfg.Group, r.ID)
	if err != nil {
		return nil, b.cephErr(err, "subvolume %s", r.ID)
	}
	if info.Quota != r.CapacityBytes {
		if err := b.cl.Resize(cctx, b.cfg.Group, r.ID, r.CapacityBytes); err != nil {
			return nil, b.cephErr(err, "resize subvolume %s", r.ID)
		}
	}
	if r.CloneSnap != "" {
		if err := b.snapRemove(cctx, r.CloneOf, r.CloneSnap); err != nil {
			return nil, err
		}
	}
	return b.ready(ctx, r)
}

// dropClone removes what a failed clone left, so the next call starts
// again from nothing.
func (b *Backend) dropClone(ctx context.Context, r *volumeRecord, st cloneState) error {
	if err := b.DeleteVolume(ctx, r.ID); err != nil {
		return err
	}
	return fmt.Errorf("%w: the clone for volume %q %s; a retry starts it again", csierr.ErrAborted, r.Name, st)
}
