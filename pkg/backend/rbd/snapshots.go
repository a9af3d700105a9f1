package rbd

import (
	"context"
	"errors"
	"fmt"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateSnapshot implements backend.Snapshotter. A snapshot is an RBD
// snapshot of the volume's image, named from the snapshot's name; of a
// volume in use it is crash-consistent. Volumes made from it are clone v2
// images, so it needs no protection, and may be deleted before them.
func (b *Backend) CreateSnapshot(ctx context.Context, spec backend.SnapshotSpec) (*backend.Snapshot, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	hash := nameHash(spec.Name)
	var rec snapshotRecord
	err = b.index.get(ctx, cr, snapshotKeyPrefix+hash, &rec)
	if err == nil {
		return &rec.Snapshot, nil
	}
	if !errors.Is(err, KindNotFound) {
		return nil, err
	}
	src, err := b.record(ctx, cr, spec.SourceVolumeID)
	if err != nil {
		return nil, err
	}
	ref := snapRef{imageRef{src.Pool, src.Image}, b.names.snapshotName(hash)}
	err = b.cl.SnapCreate(ctx, cr, ref)
	if err != nil && !errors.Is(err, KindExists) {
		return nil, err
	}
	rec = snapshotRecord{
		Snapshot: backend.Snapshot{ID: ref.String(), SnapshotSpec: spec, SizeBytes: src.CapacityBytes, CreatedAt: b.now().UTC()},
		Pool:     ref.pool, Image: ref.image, Snap: ref.snap,
	}
	if err := b.index.set(ctx, cr, snapshotKeyPrefix+hash, &rec); err != nil {
		return nil, err
	}
	return &rec.Snapshot, nil
}

// DeleteSnapshot implements backend.Snapshotter. A snapshot that clones
// still depend on goes to the image's snapshot trash, and Ceph removes it
// with its last clone.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return err
	}
	ref, hash, ok := b.names.parseSnapshotID(id)
	if !ok {
		return nil
	}
	var rec snapshotRecord
	err = b.index.get(ctx, cr, snapshotKeyPrefix+hash, &rec)
	if errors.Is(err, KindNotFound) || (err == nil && rec.ID != id) {
		return nil
	}
	if err != nil {
		return err
	}
	err = b.cl.SnapRemove(ctx, cr, ref)
	if err != nil && !errors.Is(err, KindNotFound) {
		return err
	}
	return b.index.remove(ctx, cr, snapshotKeyPrefix+hash)
}

// Snapshot implements backend.Snapshotter.
func (b *Backend) Snapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	_, hash, ok := b.names.parseSnapshotID(id)
	if !ok {
		return nil, csierr.NotFound("snapshot %q is not an rbd snapshot id of this cluster", id)
	}
	var rec snapshotRecord
	if err := b.index.get(ctx, cr, snapshotKeyPrefix+hash, &rec); err != nil {
		return nil, notFoundAs(err, "snapshot %s does not exist", id)
	}
	if rec.ID != id {
		return nil, csierr.NotFound("snapshot %s does not exist", id)
	}
	return &rec.Snapshot, nil
}

// ListSnapshots implements backend.Snapshotter: one read of the index.
func (b *Backend) ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := b.index.snapshots(ctx, cr)
	if err != nil {
		return nil, err
	}
	out := make([]*backend.Snapshot, len(recs))
	for i, r := range recs {
		out[i] = &r.Snapshot
	}
	return out, nil
}

// SnapshotsPage implements backend.SnapshotPager, in the order of the
// keys as VolumesPage: that of the snapshot names' hashes.
func (b *Backend) SnapshotsPage(ctx context.Context, after string, max int, keep func(*backend.Snapshot) bool) ([]*backend.Snapshot, bool, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, false, err
	}
	start := ""
	if after != "" {
		_, hash, ok := b.names.parseSnapshotID(after)
		if !ok {
			return nil, false, fmt.Errorf("%w: starting_token names no rbd snapshot of this cluster (%q)", csierr.ErrAborted, after)
		}
		start = snapshotKeyPrefix + hash
	}
	var kept func(*snapshotRecord) bool
	if keep != nil {
		kept = func(r *snapshotRecord) bool { return keep(&r.Snapshot) }
	}
	recs, more, err := page(ctx, b.index, cr, snapshotKeyPrefix, start, max, kept)
	if err != nil {
		return nil, false, err
	}
	out := make([]*backend.Snapshot, len(recs))
	for i, r := range recs {
		out[i] = &r.Snapshot
	}
	return out, more, nil
}

// SnapshotNamed implements backend.NameFinder.
func (b *Backend) SnapshotNamed(ctx context.Context, name string) (*backend.Snapshot, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	var rec snapshotRecord
	if err := b.index.get(ctx, cr, snapshotKeyPrefix+nameHash(name), &rec); err != nil {
		return nil, notFoundAs(err, "no snapshot is named %q", name)
	}
	return &rec.Snapshot, nil
}
