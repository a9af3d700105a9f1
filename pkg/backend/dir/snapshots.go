package dir

import (
	"context"
	"errors"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateSnapshot implements backend.Snapshotter. A snapshot is a copy of
// the volume's tree (reflinks where the filesystem has them), taken file by
// file: of a volume being written meanwhile each file is copied as it is
// when read, so stop the writers for a consistent copy. The copy is built
// aside and renamed into place, so a crash never leaves a partial snapshot.
func (b *Backend) CreateSnapshot(ctx context.Context, spec backend.SnapshotSpec) (*backend.Snapshot, error) {
	if err := b.guard(); err != nil {
		return nil, err
	}
	id, snap, err := filestore.Find(b.store, snapshotName, spec.Name, ValidSnapshotID, b.readSnapshot)
	if err != nil || snap != nil {
		return snap, err
	}
	if _, err := b.readVolume(spec.SourceVolumeID); err != nil {
		return nil, err
	}
	if id, err = b.store.ClaimNew(snapshotName, spec.Name, id, "snap-", ValidSnapshotID); err != nil {
		return nil, err
	}
	size, err := b.buildTree(ctx, b.snapshotTree(id), b.volumeTree(spec.SourceVolumeID), nil)
	if err != nil {
		return nil, err
	}
	s := &backend.Snapshot{ID: id, SnapshotSpec: spec, SizeBytes: size, CreatedAt: b.now().UTC()}
	if err := b.store.AddRecord(b.snapshotRecord(id), s); err != nil {
		return nil, err
	}
	return s, nil
}

// DeleteSnapshot implements backend.Snapshotter.
func (b *Backend) DeleteSnapshot(_ context.Context, id string) error {
	if err := b.guard(); err != nil {
		return err
	}
	s, err := b.readSnapshot(id)
	if errors.Is(err, csierr.ErrNotFound) {
		if ValidSnapshotID(id) {
			return b.removeTree(b.snapshotTree(id))
		}
		return nil
	}
	if err != nil {
		return err
	}
	if err := b.store.ReleaseName(snapshotName, s.Name, id); err != nil {
		return err
	}
	if err := b.removeTree(b.snapshotTree(id)); err != nil {
		return err
	}
	return filestore.RemoveFiles(b.snapshotRecord(id))
}

// Snapshot implements backend.Snapshotter.
func (b *Backend) Snapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	return b.readSnapshot(id)
}

func (b *Backend) readSnapshot(id string) (*backend.Snapshot, error) {
	if !ValidSnapshotID(id) {
		return nil, csierr.NotFound("snapshot %q is not a dir snapshot id", id)
	}
	var s backend.Snapshot
	if err := filestore.ReadJSON(b.snapshotRecord(id), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// ListSnapshots implements backend.Snapshotter.
func (b *Backend) ListSnapshots(context.Context) ([]*backend.Snapshot, error) {
	if err := b.guard(); err != nil {
		return nil, err
	}
	return filestore.ReadAll(b.store, snapshotsDir, ValidSnapshotID, b.readSnapshot)
}

// SnapshotNamed implements backend.NameFinder.
func (b *Backend) SnapshotNamed(_ context.Context, name string) (*backend.Snapshot, error) {
	if err := b.guard(); err != nil {
		return nil, err
	}
	return filestore.Named(b.store, snapshotName, name, ValidSnapshotID, b.readSnapshot)
}

// SnapshotsPage implements backend.SnapshotPager.
func (b *Backend) SnapshotsPage(_ context.Context, after string, max int, keep func(*backend.Snapshot) bool) ([]*backend.Snapshot, bool, error) {
	if err := b.guard(); err != nil {
		return nil, false, err
	}
	return filestore.ReadPage(b.store, snapshotsDir, ValidSnapshotID, b.readSnapshot, after, max, keep)
}
