package cephfs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateVolume implements backend.Controller: an empty subvolume whose
// quota is the volume's capacity. The record is written before the
// subvolume is made and marked ready after, so a retry after a crash
// anywhere completes the volume.
func (b *Backend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	r, err := b.begin(ctx, spec, stateCreating)
	if err != nil || r.State == stateReady {
		return volumeOf(r), err
	}
	if r.State != stateCreating {
		return nil, csierr.Precondition("volume %s named %q is being made as a copy", r.ID, r.Name)
	}
	var root rootDir
	if r.Root != nil {
		root = rootDir{UID: int(r.Root.UID), GID: int(r.Root.GID), Mode: int(r.Root.Mode)}
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	if err := b.cl.Create(cctx, b.cfg.Group, r.ID, r.CapacityBytes, root); err != nil {
		return nil, b.cephErr(err, "create subvolume %s", r.ID)
	}
	return b.ready(ctx, r)
}

// checkSpec refuses what a subvolume cannot be.
func checkSpec(spec backend.VolumeSpec) error {
	if spec.Block || spec.FsType != "" || spec.MkfsOptions != "" || spec.MountOptions != "" ||
		len(spec.Parameters) > 0 || len(spec.MutableParameters) > 0 {
		return csierr.Invalid("a cephfs volume is a subvolume of the file system: mount access, without fsType, mkfsOptions, mountOptions or other parameters")
	}
	return nil
}

// begin returns the record of the volume spec names: the existing one, or
// a new one in state, written.
func (b *Backend) begin(ctx context.Context, spec backend.VolumeSpec, state string) (*volumeRecord, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	if err := b.cephErr(b.cl.CreateGroup(ctx, b.cfg.Group), "subvolume group %s", b.cfg.Group); err != nil {
		return nil, err
	}
	id, r, err := recordFor(ctx, b, volumeNameKey(spec.Name), "vol-", ValidVolumeID, b.readVolume)
	if err != nil || r != nil {
		return r, err
	}
	r = &volumeRecord{Volume: backend.Volume{ID: id, VolumeSpec: spec, CreatedAt: b.now().UTC().Truncate(time.Second)}, State: state}
	return r, b.putJSON(ctx, volumeKey(id), r)
}

// ready records the subvolume's path and marks the volume ready.
func (b *Backend) ready(ctx context.Context, r *volumeRecord) (*backend.Volume, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	info, err := b.cl.Info(ctx, b.cfg.Group, r.ID)
	if err != nil {
		return nil, b.cephErr(err, "subvolume %s", r.ID)
	}
	r.Path, r.State = info.Path, stateReady
	r.CloneSnap, r.CloneOf = "", ""
	if err := b.putJSON(ctx, volumeKey(r.ID), r); err != nil {
		return nil, err
	}
	return volumeOf(r), nil
}

func volumeOf(r *volumeRecord) *backend.Volume {
	if r == nil {
		return nil
	}
	v := r.Volume
	return &v
}

// Volume implements backend.Controller and backend.Node: a volume still
// being made is not found.
func (b *Backend) Volume(ctx context.Context, id string) (*backend.Volume, error) {
	r, err := b.readReady(ctx, id)
	return volumeOf(r), err
}

func (b *Backend) readReady(ctx context.Context, id string) (*volumeRecord, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	r, err := b.readVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State != stateReady {
		return nil, csierr.NotFound("volume %s is still being made (%s)", id, r.State)
	}
	return r, nil
}

// ListVolumes implements backend.Controller: the ready volumes.
func (b *Backend) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	rs, err := readAll(ctx, b, "vol.", b.readVolume)
	if err != nil {
		return nil, err
	}
	out := make([]*backend.Volume, 0, len(rs))
	for _, r := range rs {
		if r.State == stateReady {
			out = append(out, volumeOf(r))
		}
	}
	return out, nil
}

// DeleteVolume implements backend.Controller. A volume with snapshots
// is removed with them retained: they stay usable, and the subvolume goes
// with its last snapshot. A copy in progress is cancelled.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	if !ValidVolumeID(id) {
		return nil
	}
	ctx, cancel := b.call(ctx)
	defer cancel()
	r, err := b.readVolume(ctx, id)
	if errors.Is(err, csierr.ErrNotFound) {
		r, err = nil, nil // a crash after the record went: the name may remain
	}
	if err != nil {
		return err
	}
	if err := b.removeSubvolume(ctx, id); err != nil {
		return err
	}
	if r != nil && r.CloneSnap != "" {
		if err := b.snapRemove(ctx, r.CloneOf, r.CloneSnap); err != nil {
			return err
		}
	}
	if err := b.deleteKey(ctx, volumeKey(id)); err != nil || r == nil {
		return err
	}
	return b.forgetName(ctx, volumeNameKey(r.Name), id)
}

// removeSubvolume removes a subvolume, cancelling a clone in progress.
func (b *Backend) removeSubvolume(ctx context.Context, id string) error {
	err := b.cl.Remove(ctx, b.cfg.Group, id)
	if isKind(err, KindBusy) {
		// A clone still in progress is cancelled first.
		if st, serr := b.cl.CloneState(ctx, b.cfg.Group, id); serr == nil && (st == clonePending || st == cloneInProgress) {
			if cerr := b.cl.CancelClone(ctx, b.cfg.Group, id); cerr != nil && !isKind(cerr, KindNotFound) {
				return b.cephErr(cerr, "cancel the clone %s", id)
			}
			err = b.cl.Remove(ctx, b.cfg.Group, id)
		}
	}
	if err == nil || isKind(err, KindNotFound) {
		return nil
	}
	return b.cephErr(err, "remove subvolume %s", id)
}

// ExpandVolume implements backend.Expander: the quota grows, and mounted
// clients see it at once.
func (b *Backend) ExpandVolume(ctx context.Context, id string, size int64) (int64, error) {
	r, err := b.readReady(ctx, id)
	if err != nil {
		return 0, err
	}
	if size <= r.CapacityBytes {
		return r.CapacityBytes, nil
	}
	ctx, cancel := b.call(ctx)
	defer cancel()
	if err := b.cl.Resize(ctx, b.cfg.Group, id, size); err != nil {
		return 0, b.cephErr(err, "resize subvolume %s", id)
	}
	r.CapacityBytes = size
	return size, b.putJSON(ctx, volumeKey(id), r)
}

// Publish implements backend.Controller: the attachment is recorded; every
// node mounts the subvolume itself.
func (b *Backend) Publish(ctx context.Context, cur *backend.Volume, a backend.Attachment) (map[string]string, error) {
	r, err := b.readReady(ctx, cur.ID)
	if err != nil {
		return nil, err
	}
	if cur, ok := r.AttachedTo(a.NodeID); !ok || cur != a {
		r.SetAttachment(a)
		ctx, cancel := b.call(ctx)
		defer cancel()
		if err := b.putJSON(ctx, volumeKey(r.ID), r); err != nil {
			return nil, err
		}
	}
	return map[string]string{"accessType": "mount"}, nil
}

// Unpublish implements backend.Controller.
func (b *Backend) Unpublish(ctx context.Context, id, nodeID string) error {
	r, err := b.readReady(ctx, id)
	if errors.Is(err, csierr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, ok := r.AttachedTo(nodeID); !ok {
		return nil
	}
	r.RemoveAttachment(nodeID)
	ctx, cancel := b.call(ctx)
	defer cancel()
	return b.putJSON(ctx, volumeKey(id), r)
}

// errCloning is what a CreateVolume answers while its clone is copied: the
// caller retries, and a later call completes the volume.
func errCloning(id string, st cloneState) error {
	return fmt.Errorf("%w: volume %s is being copied (clone %s): retry", csierr.ErrAborted, id, st)
}
