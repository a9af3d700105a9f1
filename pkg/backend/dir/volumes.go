package dir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// CreateVolume implements backend.Controller: an empty directory.
func (b *Backend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	return b.create(ctx, spec, "")
}

// CreateVolumeFrom implements backend.Cloner: a copy of the source's tree.
func (b *Backend) CreateVolumeFrom(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	src, err := b.sourceTree(spec.Source)
	if err != nil {
		return nil, err
	}
	return b.create(ctx, spec, src)
}

// create makes the volume spec names, with a copy of src ("": empty). The
// steps are ordered so that a crash anywhere leaves state a retry
// completes: the name is claimed first, the tree is built in dir/tmp and
// renamed into place, and the record that makes the volume exist is
// written last.
func (b *Backend) create(ctx context.Context, spec backend.VolumeSpec, src string) (*backend.Volume, error) {
	if spec.Block || spec.FsType != "" || spec.MkfsOptions != "" || len(spec.Parameters) > 0 || len(spec.MutableParameters) > 0 {
		return nil, csierr.Invalid("a dir volume is a directory: mount access, without fsType, mkfsOptions or other parameters")
	}
	if err := b.guard(); err != nil {
		return nil, err
	}
	id, v, err := filestore.Find(b.store, volumeName, spec.Name, ValidVolumeID, b.readVolume)
	if err != nil || v != nil {
		return v, err
	}
	if id, err = b.store.ClaimNew(volumeName, spec.Name, id, "vol-", ValidVolumeID); err != nil {
		return nil, err
	}
	if _, err := b.buildTree(ctx, b.volumeTree(id), src, spec.Root); err != nil {
		return nil, err
	}
	v = &backend.Volume{ID: id, VolumeSpec: spec, CreatedAt: b.now().UTC()}
	if err := b.store.AddRecord(b.volumeRecord(id), v); err != nil {
		return nil, err
	}
	return v, nil
}

// buildTree makes path a complete tree: a copy of src, or an empty
// directory with root's owner and mode (nil: root's, 0755). It is built
// and synced in dir/tmp and renamed into place, so path never holds a
// partial copy or a directory not yet given its owner; a path present
// already is complete. The rename is durable once the caller has synced
// path's directory (AddRecord does). It returns the bytes copied.
func (b *Backend) buildTree(ctx context.Context, path, src string, root *backend.RootDir) (int64, error) {
	if _, err := os.Lstat(path); err == nil {
		return treeSize(path)
	}
	tmp := b.tmpTree(filepath.Base(path))
	var size int64
	var err error
	if src == "" {
		if err := os.RemoveAll(tmp); err != nil { // an earlier attempt's
			return 0, err
		}
		err = os.Mkdir(tmp, 0o755)
		if err == nil && root != nil {
			err = root.Apply(tmp)
		}
	} else {
		// A copy that an earlier call's time cut short goes on where it
		// stopped (Swarm gives a call about 15 s, docs/swarm.md).
		size, err = copyTree(ctx, src, tmp)
	}
	if err == nil {
		err = fsutil.SyncDir(tmp)
	}
	if err != nil {
		if src == "" || !(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			os.RemoveAll(tmp)
		}
		return 0, fmt.Errorf("building %s: %w", path, err)
	}
	return size, os.Rename(tmp, path)
}

// sourceTree returns the tree a new volume is copied from.
func (b *Backend) sourceTree(src *backend.Source) (string, error) {
	switch {
	case src == nil:
		return "", csierr.Invalid("a copy needs a source")
	case src.SnapshotID != "":
		if _, err := b.readSnapshot(src.SnapshotID); err != nil {
			return "", err
		}
		return b.snapshotTree(src.SnapshotID), nil
	default:
		if _, err := b.readVolume(src.VolumeID); err != nil {
			return "", err
		}
		return b.volumeTree(src.VolumeID), nil
	}
}

// DeleteVolume implements backend.Controller. The name goes first, then the
// tree (retained or removed, as configured), then the record: a crash at
// any point leaves a record a retry finds, or nothing.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	if err := b.guard(); err != nil {
		return err
	}
	v, err := b.readVolume(id)
	if errors.Is(err, csierr.ErrNotFound) {
		if ValidVolumeID(id) { // remains of a creation that never finished
			return b.removeTree(b.volumeTree(id))
		}
		return nil
	}
	if err != nil {
		return err
	}
	if len(v.Attachments) > 0 {
		return fmt.Errorf("%w: volume %s is still published to node %s", csierr.ErrInUse, id, v.Attachments[0].NodeID)
	}
	if err := b.store.ReleaseName(volumeName, v.Name, id); err != nil {
		return err
	}
	tree := b.volumeTree(id)
	if b.onDelete == Retain {
		err = b.retain(v, tree)
	} else {
		err = b.removeTree(tree)
	}
	if err != nil {
		return err
	}
	return filestore.RemoveFiles(b.volumeRecord(id))
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// retain moves a deleted volume's tree to dir/retained/<name>-<time>-<id>,
// the name reduced to safe characters.
func (b *Backend) retain(v *backend.Volume, tree string) error {
	if _, err := os.Lstat(tree); errors.Is(err, fs.ErrNotExist) {
		return nil // retained already
	}
	name := unsafeName.ReplaceAllString(v.Name, "_")
	if len(name) > 64 {
		name = name[:64]
	}
	dst := b.store.Path(retainedDir, fmt.Sprintf("%s-%s-%s", name, b.now().UTC().Format("20060102T150405Z"), v.ID))
	if err := os.Rename(tree, dst); err != nil {
		return err
	}
	return errors.Join(fsutil.SyncDir(filepath.Dir(tree)), fsutil.SyncDir(filepath.Dir(dst)))
}

// removeTree removes a tree: renamed into dir/tmp first, so that what a
// crash leaves half-removed is never taken for a volume or snapshot.
func (b *Backend) removeTree(tree string) error {
	tmp := b.tmpTree(filepath.Base(tree))
	if err := os.RemoveAll(tmp); err != nil { // an earlier attempt's
		return err
	}
	if err := os.Rename(tree, tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(tree))
}

// Volume implements backend.Controller and backend.Node. A volume not found
// where the shared filesystem is missing is that problem, not NotFound.
func (b *Backend) Volume(_ context.Context, id string) (*backend.Volume, error) {
	v, err := b.readVolume(id)
	if errors.Is(err, csierr.ErrNotFound) && ValidVolumeID(id) {
		if gerr := b.guard(); gerr != nil {
			return nil, gerr
		}
	}
	return v, err
}

func (b *Backend) readVolume(id string) (*backend.Volume, error) {
	if !ValidVolumeID(id) {
		return nil, csierr.NotFound("volume %q is not a dir volume id", id)
	}
	var v backend.Volume
	if err := filestore.ReadJSON(b.volumeRecord(id), &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// ListVolumes implements backend.Controller.
func (b *Backend) ListVolumes(context.Context) ([]*backend.Volume, error) {
	if err := b.guard(); err != nil {
		return nil, err // not an empty list
	}
	return filestore.ReadAll(b.store, volumesDir, ValidVolumeID, b.readVolume)
}

// VolumeNamed implements backend.NameFinder.
func (b *Backend) VolumeNamed(_ context.Context, name string) (*backend.Volume, error) {
	if err := b.guard(); err != nil {
		return nil, err
	}
	return filestore.Named(b.store, volumeName, name, ValidVolumeID, b.readVolume)
}

// VolumesPage implements backend.VolumePager.
func (b *Backend) VolumesPage(_ context.Context, after string, max int) ([]*backend.Volume, bool, error) {
	if err := b.guard(); err != nil {
		return nil, false, err
	}
	return filestore.ReadPage(b.store, volumesDir, ValidVolumeID, b.readVolume, after, max, nil)
}

// NodeAttachments implements backend.AttachmentCounter from the index of
// attachments by node.
func (b *Backend) NodeAttachments(_ context.Context, nodeID string) (int64, error) {
	if err := b.guard(); err != nil {
		return 0, err
	}
	return b.store.NodeAttachments(volumesDir, nodeID, ValidVolumeID)
}

// Publish implements backend.Controller: the attachment is recorded; the
// node mounts the directory itself, from the volume id alone.
func (b *Backend) Publish(_ context.Context, cur *backend.Volume, a backend.Attachment) (map[string]string, error) {
	if err := b.guard(); err != nil {
		return nil, err
	}
	v, err := b.readVolume(cur.ID)
	if err != nil {
		return nil, err
	}
	if err := b.store.SetAttachment(b.volumeRecord(v.ID), v, a); err != nil {
		return nil, err
	}
	return map[string]string{"accessType": "mount"}, nil
}

// Unpublish implements backend.Controller.
func (b *Backend) Unpublish(_ context.Context, id, nodeID string) error {
	if err := b.guard(); err != nil {
		return err
	}
	v, err := b.readVolume(id)
	if errors.Is(err, csierr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return b.store.RemoveAttachment(b.volumeRecord(id), v, nodeID)
}
