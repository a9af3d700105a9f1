package loop

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// CreateSnapshot implements backend.Snapshotter. A snapshot is a copy of the
// volume's image: a reflink where the filesystem supports it, a sparse copy
// otherwise. Of a volume in use it is crash-consistent.
func (b *Backend) CreateSnapshot(ctx context.Context, spec backend.SnapshotSpec) (*backend.Snapshot, error) {
	id, snap, err := filestore.Find(b.store.Store, snapshotPrefix, spec.Name, ValidSnapshotID, b.readSnapshot)
	if err != nil || snap != nil {
		return snap, err
	}
	if _, err := b.readVolume(spec.SourceVolumeID); err != nil {
		return nil, err
	}
	if id, err = b.store.ClaimNew(snapshotPrefix, spec.Name, id, snapshotPrefix, ValidSnapshotID); err != nil {
		return nil, err
	}
	img := b.store.snapshotImage(id)
	if err := buildImage(ctx, img, b.store.volumeImage(spec.SourceVolumeID), 0); err != nil {
		return nil, err
	}
	// The image is durable before the record: built again after a crash,
	// it would hold what the volume holds then, not what the record says.
	if err := fsutil.SyncDir(filepath.Dir(img)); err != nil {
		return nil, err
	}
	fi, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	s := &backend.Snapshot{ID: id, SnapshotSpec: spec, SizeBytes: fi.Size(), CreatedAt: b.now().UTC()}
	if err := b.store.AddRecord(b.store.snapshotRecord(id), s); err != nil {
		return nil, err
	}
	return s, nil
}

// DeleteSnapshot implements backend.Snapshotter.
func (b *Backend) DeleteSnapshot(_ context.Context, id string) error {
	s, err := b.readSnapshot(id)
	if errors.Is(err, csierr.ErrNotFound) {
		return b.store.removeRemains(snapshots, id)
	}
	if err != nil {
		return err
	}
	return b.store.remove(snapshots, id, s.Name)
}

// Snapshot implements backend.Snapshotter.
func (b *Backend) Snapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	return b.readSnapshot(id)
}

func (b *Backend) readSnapshot(id string) (*backend.Snapshot, error) {
	return readRecord[backend.Snapshot](b.store, snapshots, id)
}

// ListSnapshots implements backend.Snapshotter.
func (b *Backend) ListSnapshots(context.Context) ([]*backend.Snapshot, error) {
	return filestore.ReadAll(b.store.Store, snapshotsDir, ValidSnapshotID, b.readSnapshot)
}

// SnapshotNamed implements backend.NameFinder.
func (b *Backend) SnapshotNamed(_ context.Context, name string) (*backend.Snapshot, error) {
	return filestore.Named(b.store.Store, snapshotPrefix, name, ValidSnapshotID, b.readSnapshot)
}

// SnapshotsPage implements backend.SnapshotPager.
func (b *Backend) SnapshotsPage(_ context.Context, after string, max int, keep func(*backend.Snapshot) bool) ([]*backend.Snapshot, bool, error) {
	return filestore.ReadPage(b.store.Store, snapshotsDir, ValidSnapshotID, b.readSnapshot, after, max, keep)
}
