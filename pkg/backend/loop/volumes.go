package loop

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// CreateVolumeFrom implements backend.Cloner: CreateVolume copies the
// source it is given.
func (b *Backend) CreateVolumeFrom(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	return b.CreateVolume(ctx, spec)
}

// CreateVolume implements backend.Controller, and makes the copies of
// CreateVolumeFrom. The steps are ordered so that
// a crash anywhere leaves state a retry completes: the name is claimed first,
// the image is built under a temporary name and renamed into place, and the
// record that makes the volume exist is written last.
func (b *Backend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	if len(spec.Parameters) > 0 {
		return nil, csierr.Invalid("the loop backend takes no parameters beyond fsType, mkfsOptions, uid, gid and mode")
	}
	if err := checkMutable(spec.MutableParameters); err != nil {
		return nil, err
	}
	id, v, err := filestore.Find(b.store.Store, volumePrefix, spec.Name, ValidVolumeID, b.readVolume)
	if err != nil {
		return nil, err
	}
	if v != nil {
		if err := b.completeImage(ctx, v); err != nil {
			return nil, err
		}
		return v, nil
	}
	// Check the source before claiming the name, so a missing source
	// leaves nothing behind.
	src, err := b.sourceImage(spec.Source)
	if err != nil {
		return nil, err
	}
	if id, err = b.store.ClaimNew(volumePrefix, spec.Name, id, volumePrefix, ValidVolumeID); err != nil {
		return nil, err
	}

	if err := buildImage(ctx, b.store.volumeImage(id), src, spec.CapacityBytes); err != nil {
		return nil, err
	}
	v = &backend.Volume{ID: id, VolumeSpec: spec, CreatedAt: b.now().UTC()}
	if err := b.store.AddRecord(b.store.volumeRecord(id), v); err != nil {
		return nil, err
	}
	return v, nil
}

// completeImage builds the image of a volume whose record exists without
// it. The image's rename is made durable with the record, by one sync of
// their directory, so a crash before that sync may keep the record alone;
// the CreateVolume the CO then retries, since it never saw success, lands
// here.
func (b *Backend) completeImage(ctx context.Context, v *backend.Volume) error {
	img := b.store.volumeImage(v.ID)
	if _, err := os.Stat(img); !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	src, err := b.sourceImage(v.Source)
	if err != nil {
		return err
	}
	if err := buildImage(ctx, img, src, v.CapacityBytes); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(img))
}

// sourceImage returns the image file a new volume is copied from, or "".
func (b *Backend) sourceImage(src *backend.Source) (string, error) {
	switch {
	case src == nil:
		return "", nil
	case src.SnapshotID != "":
		if _, err := b.readSnapshot(src.SnapshotID); err != nil {
			return "", err
		}
		return b.store.snapshotImage(src.SnapshotID), nil
	case src.VolumeID != "":
		if _, err := b.readVolume(src.VolumeID); err != nil {
			return "", err
		}
		return b.store.volumeImage(src.VolumeID), nil
	}
	return "", nil
}

// DeleteVolume implements backend.Controller.
func (b *Backend) DeleteVolume(_ context.Context, id string) error {
	v, err := b.readVolume(id)
	if errors.Is(err, csierr.ErrNotFound) {
		return b.store.removeRemains(volumes, id)
	}
	if err != nil {
		return err
	}
	if len(v.Attachments) > 0 {
		return fmt.Errorf("%w: volume %s is still published to node %s", csierr.ErrInUse, id, v.Attachments[0].NodeID)
	}
	return b.store.remove(volumes, id, v.Name)
}

// Volume implements backend.Controller and backend.Node.
func (b *Backend) Volume(_ context.Context, id string) (*backend.Volume, error) {
	return b.readVolume(id)
}

func (b *Backend) readVolume(id string) (*backend.Volume, error) {
	return readRecord[backend.Volume](b.store, volumes, id)
}

// ListVolumes implements backend.Controller.
func (b *Backend) ListVolumes(context.Context) ([]*backend.Volume, error) {
	return filestore.ReadAll(b.store.Store, volumesDir, ValidVolumeID, b.readVolume)
}

// VolumeNamed implements backend.NameFinder.
func (b *Backend) VolumeNamed(_ context.Context, name string) (*backend.Volume, error) {
	return filestore.Named(b.store.Store, volumePrefix, name, ValidVolumeID, b.readVolume)
}

// VolumesPage implements backend.VolumePager.
func (b *Backend) VolumesPage(_ context.Context, after string, max int) ([]*backend.Volume, bool, error) {
	return filestore.ReadPage(b.store.Store, volumesDir, ValidVolumeID, b.readVolume, after, max, nil)
}

// NodeAttachments implements backend.AttachmentCounter from the index of
// attachments by node.
func (b *Backend) NodeAttachments(_ context.Context, nodeID string) (int64, error) {
	return b.store.NodeAttachments(volumesDir, nodeID, ValidVolumeID)
}

// Publish implements backend.Controller: the attachment is recorded; the
// node attaches the image itself.
func (b *Backend) Publish(_ context.Context, cur *backend.Volume, a backend.Attachment) (map[string]string, error) {
	id := cur.ID
	v, err := b.readVolume(id)
	if err != nil {
		return nil, err
	}
	if err := b.store.SetAttachment(b.store.volumeRecord(id), v, a); err != nil {
		return nil, err
	}
	return publishContext(v), nil
}

// publishContext tells the node how the volume is formatted. The node reads
// the same facts from the volume record when Swarm sends no context.
func publishContext(v *backend.Volume) map[string]string {
	if v.Block {
		return map[string]string{"accessType": "block"}
	}
	return map[string]string{"accessType": "mount", "fsType": v.FsType}
}

// Unpublish implements backend.Controller.
func (b *Backend) Unpublish(_ context.Context, id, nodeID string) error {
	v, err := b.readVolume(id)
	if errors.Is(err, csierr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return b.store.RemoveAttachment(b.store.volumeRecord(id), v, nodeID)
}

// ModifyVolume implements backend.Modifier.
func (b *Backend) ModifyVolume(_ context.Context, id string, params map[string]string) error {
	if err := checkMutable(params); err != nil {
		return err
	}
	v, err := b.readVolume(id)
	if err != nil {
		return err
	}
	if v.MutableParameters == nil {
		v.MutableParameters = map[string]string{}
	}
	maps.Copy(v.MutableParameters, params)
	return filestore.WriteJSON(b.store.volumeRecord(id), v, fsutil.Durable)
}

// ExpandVolume implements backend.Expander. The image grows first; the
// record follows, so a crash in between is completed by a retry.
func (b *Backend) ExpandVolume(_ context.Context, id string, size int64) (int64, error) {
	v, err := b.readVolume(id)
	if err != nil {
		return 0, err
	}
	if size <= v.CapacityBytes {
		return v.CapacityBytes, nil
	}
	if err := growFile(b.store.volumeImage(id), size); err != nil {
		return 0, err
	}
	v.CapacityBytes = size
	if err := filestore.WriteJSON(b.store.volumeRecord(id), v, fsutil.Durable); err != nil {
		return 0, err
	}
	return size, nil
}

// growFile extends a file to size bytes (sparse) and makes that durable.
func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < size {
		if err := f.Truncate(size); err != nil {
			return err
		}
	}
	return f.Sync()
}
