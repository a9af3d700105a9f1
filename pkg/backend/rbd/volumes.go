package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// metaName is the image metadata key that holds the CSI name of the
// volume an image belongs to (JSON-quoted), so that an image found in a
// pool can be traced back, and a retried CreateVolume checks it is its own.
const metaName = "swarm-csi.name"

// CreateVolumeFrom implements backend.Cloner: CreateVolume copies the
// source it is given.
func (b *Backend) CreateVolumeFrom(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	return b.CreateVolume(ctx, spec)
}

// CreateVolume implements backend.Controller, and makes the copies of
// CreateVolumeFrom. The image's name follows from
// the volume's name, so every step finds what an earlier attempt left:
// the image is made (or found), labelled with the name, and the record
// that makes the volume exist is written last.
func (b *Backend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	if err := checkMutable(spec.MutableParameters); err != nil {
		return nil, err
	}
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	pool, features, err := b.imageParams(spec.Parameters)
	if err != nil {
		return nil, err
	}
	hash := nameHash(spec.Name)
	// The record first: the same name may have its image in another pool.
	var rec volumeRecord
	err = b.index.get(ctx, cr, volumeKeyPrefix+hash, &rec)
	if err == nil {
		return &rec.Volume, nil
	}
	if !errors.Is(err, KindNotFound) {
		return nil, err
	}
	ref := imageRef{pool, b.names.volumeImage(hash)}
	if err := b.makeImage(ctx, cr, ref, spec, features); err != nil {
		return nil, err
	}
	if err := b.applyMutable(ctx, cr, ref, spec.MutableParameters); err != nil {
		return nil, err
	}
	quoted, _ := json.Marshal(spec.Name)
	if err := b.cl.MetaSet(ctx, cr, ref, metaName, string(quoted)); err != nil {
		return nil, err
	}
	rec = volumeRecord{
		Volume: backend.Volume{ID: ref.String(), VolumeSpec: spec, CreatedAt: b.now().UTC()},
		Pool:   ref.pool, Image: ref.image,
	}
	if err := b.index.set(ctx, cr, volumeKeyPrefix+hash, &rec); err != nil {
		return nil, err
	}
	return &rec.Volume, nil
}

// imageParams checks the backend's CreateVolume parameters.
func (b *Backend) imageParams(p map[string]string) (pool, features string, err error) {
	pool, features = b.cfg.Pool, b.cfg.ImageFeatures
	if v, ok := p[ParamPool]; ok {
		if !poolPattern.MatchString(v) {
			return "", "", csierr.Invalid("parameter %s=%q: a pool name is letters, digits, '.', '_' and '-'", ParamPool, v)
		}
		pool = v
	}
	if v, ok := p[ParamImageFeatures]; ok {
		if !featuresPattern.MatchString(v) {
			return "", "", csierr.Invalid("parameter %s=%q: comma-separated feature names such as layering,exclusive-lock", ParamImageFeatures, v)
		}
		features = v
	}
	return pool, features, nil
}

// makeImage makes the image of a new volume, or finds the one an earlier
// attempt made. A leftover that does not match the request (an attempt
// with other arguments that never completed) is removed and made again:
// no one was ever given its id.
func (b *Backend) makeImage(ctx context.Context, cr creds, ref imageRef, spec backend.VolumeSpec, features string) error {
	parent, parentSize, err := b.sourceSnapshot(ctx, cr, spec)
	if err != nil {
		return err
	}
	create := func() error { return b.createImage(ctx, cr, ref, spec, features, parent) }
	err = create()
	if errors.Is(err, KindExists) {
		// Left by an earlier attempt: keep it if it is what this request
		// makes, make it again otherwise.
		info, ierr := b.info(ctx, cr, ref)
		if ierr != nil {
			return ierr
		}
		if b.leftoverMatches(ctx, cr, ref, info, spec, parent) {
			return b.finishSource(ctx, cr, ref, spec, info.Size)
		}
		if err := b.removeImage(ctx, cr, ref); err != nil {
			return err
		}
		err = create()
	}
	if err != nil {
		if spec.Source != nil && spec.Source.VolumeID != "" {
			// The temporary snapshot would keep the source from being
			// deleted; a retry takes it again.
			b.dropCloneSnapshot(ctx, cr, parent)
		}
		return createError(err)
	}
	size := parentSize // a clone starts at its parent's size
	if parent == nil {
		size = spec.CapacityBytes
	}
	return b.finishSource(ctx, cr, ref, spec, size)
}

// createImage makes a volume's image: empty, or a clone of parent.
func (b *Backend) createImage(ctx context.Context, cr creds, ref imageRef, spec backend.VolumeSpec, features string, parent *snapRef) error {
	o := imageOptions{Features: features, DataPool: b.cfg.DataPool}
	if parent == nil {
		return b.cl.Create(ctx, cr, ref, spec.CapacityBytes, o)
	}
	err := b.cl.Clone(ctx, cr, *parent, ref, o)
	if errors.Is(err, KindNotFound) {
		return csierr.NotFound("content source %s no longer exists", parent)
	}
	return err
}

// createError says which argument Ceph refused.
func createError(err error) error {
	if errors.Is(err, KindInvalid) {
		return fmt.Errorf("%w (check the image features and the data pool)", err)
	}
	if errors.Is(err, KindNotFound) {
		return fmt.Errorf("%w (does the pool exist?)", err)
	}
	return err
}

// leftoverMatches reports whether an image found where a new volume's
// image belongs is what this request would make.
func (b *Backend) leftoverMatches(ctx context.Context, cr creds, ref imageRef, info *imageInfo, spec backend.VolumeSpec, parent *snapRef) bool {
	if parent == nil {
		if info.Parent != nil || info.Size != spec.CapacityBytes {
			return false
		}
	} else if info.Parent == nil || info.Parent.Pool != parent.pool || info.Parent.Image != parent.image {
		// The snapshot is not compared: a cloned volume's temporary one
		// may have gone to the trash under another name already.
		return false
	}
	out, err := b.cl.MetaGet(ctx, cr, ref, metaName)
	if errors.Is(err, KindNotFound) {
		return true // made, not labelled yet
	}
	var name string
	return err == nil && json.Unmarshal([]byte(out), &name) == nil && name == spec.Name
}

// finishSource completes a copy: the clone grows to the requested size
// and the temporary snapshot of a cloned volume goes (into the trash
// while the clone depends on it).
func (b *Backend) finishSource(ctx context.Context, cr creds, ref imageRef, spec backend.VolumeSpec, size int64) error {
	if spec.Source == nil {
		return nil
	}
	if size < spec.CapacityBytes {
		if err := b.cl.Resize(ctx, cr, ref, spec.CapacityBytes); err != nil {
			return err
		}
	}
	if spec.Source.VolumeID != "" {
		src, _, _ := b.names.parseVolumeID(spec.Source.VolumeID)
		snap := snapRef{src, b.names.cloneSnapshot(nameHash(spec.Name))}
		if err := b.cl.SnapRemove(ctx, cr, snap); err != nil && !errors.Is(err, KindNotFound) {
			return err
		}
	}
	return nil
}

// dropCloneSnapshot removes a clone's temporary snapshot after a failed
// clone, as well as it can: DeleteVolume removes any left over too.
func (b *Backend) dropCloneSnapshot(ctx context.Context, cr creds, snap *snapRef) {
	if snap == nil {
		return
	}
	if err := b.cl.SnapRemove(ctx, cr, *snap); err != nil && !errors.Is(err, KindNotFound) {
		b.cfg.Log.Warn("removing a clone's temporary snapshot failed", "snapshot", snap.String(), "error", err)
	}
}

// sourceSnapshot returns the snapshot a new volume is cloned from, taking
// a temporary one of a source volume, and its size; nil for a blank volume.
func (b *Backend) sourceSnapshot(ctx context.Context, cr creds, spec backend.VolumeSpec) (*snapRef, int64, error) {
	switch {
	case spec.Source == nil:
		return nil, 0, nil
	case spec.Source.SnapshotID != "":
		ref, hash, ok := b.names.parseSnapshotID(spec.Source.SnapshotID)
		if !ok {
			return nil, 0, csierr.NotFound("snapshot %q is not an rbd snapshot id of this cluster", spec.Source.SnapshotID)
		}
		var rec snapshotRecord
		if err := b.index.get(ctx, cr, snapshotKeyPrefix+hash, &rec); err != nil {
			return nil, 0, notFoundAs(err, "snapshot %s does not exist", spec.Source.SnapshotID)
		}
		return &ref, rec.SizeBytes, nil
	case spec.Source.VolumeID != "":
		src, err := b.record(ctx, cr, spec.Source.VolumeID)
		if err != nil {
			return nil, 0, err
		}
		snap := snapRef{imageRef{src.Pool, src.Image}, b.names.cloneSnapshot(nameHash(spec.Name))}
		err = b.cl.SnapCreate(ctx, cr, snap)
		if err != nil && !errors.Is(err, KindExists) {
			return nil, 0, err
		}
		return &snap, src.CapacityBytes, nil
	}
	return nil, 0, nil
}

// notFoundAs gives a NotFound error a message of its own.
func notFoundAs(err error, format string, args ...any) error {
	if errors.Is(err, KindNotFound) {
		return csierr.NotFound(format, args...)
	}
	return err
}

// record returns the record of a volume id, or a NotFound error.
func (b *Backend) record(ctx context.Context, cr creds, id string) (*volumeRecord, error) {
	_, hash, ok := b.names.parseVolumeID(id)
	if !ok {
		return nil, csierr.NotFound("volume %q is not an rbd volume id of this cluster", id)
	}
	var rec volumeRecord
	if err := b.index.get(ctx, cr, volumeKeyPrefix+hash, &rec); err != nil {
		return nil, notFoundAs(err, "volume %s does not exist", id)
	}
	if rec.ID != id {
		return nil, csierr.NotFound("volume %s does not exist (its name belongs to %s)", id, rec.ID)
	}
	return &rec, nil
}

// Volume implements backend.Controller and backend.Node.
func (b *Backend) Volume(ctx context.Context, id string) (*backend.Volume, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := b.record(ctx, cr, id)
	if err != nil {
		return nil, err
	}
	return &rec.Volume, nil
}

// ListVolumes implements backend.Controller: one read of the index.
func (b *Backend) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := b.index.volumes(ctx, cr)
	if err != nil {
		return nil, err
	}
	out := make([]*backend.Volume, len(recs))
	for i, r := range recs {
		out[i] = &r.Volume
	}
	return out, nil
}

// VolumesPage implements backend.VolumePager: the records are read in the
// order of their keys, that of the volume names' hashes, which is the ids'
// within a pool; after, the id of the last volume of a page, gives the
// next page's place.
func (b *Backend) VolumesPage(ctx context.Context, after string, max int) ([]*backend.Volume, bool, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, false, err
	}
	start := ""
	if after != "" {
		_, hash, ok := b.names.parseVolumeID(after)
		if !ok {
			return nil, false, fmt.Errorf("%w: starting_token names no rbd volume of this cluster (%q)", csierr.ErrAborted, after)
		}
		start = volumeKeyPrefix + hash
	}
	recs, more, err := page[volumeRecord](ctx, b.index, cr, volumeKeyPrefix, start, max, nil)
	if err != nil {
		return nil, false, err
	}
	out := make([]*backend.Volume, len(recs))
	for i, r := range recs {
		out[i] = &r.Volume
	}
	return out, more, nil
}

// VolumeNamed implements backend.NameFinder: the record is kept under the
// name's hash.
func (b *Backend) VolumeNamed(ctx context.Context, name string) (*backend.Volume, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	var rec volumeRecord
	if err := b.index.get(ctx, cr, volumeKeyPrefix+nameHash(name), &rec); err != nil {
		return nil, notFoundAs(err, "no volume is named %q", name)
	}
	return &rec.Volume, nil
}

// DeleteVolume implements backend.Controller. An image still open on a
// node, or with snapshots, is not deleted (FailedPrecondition). An image
// that clones depend on goes to the rbd trash and is removed with its last
// clone. The record goes last, so a retry after a crash finds the volume.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return err
	}
	ref, hash, ok := b.names.parseVolumeID(id)
	if !ok {
		return nil
	}
	rec, err := b.record(ctx, cr, id)
	if errors.Is(err, csierr.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(rec.Attachments) > 0 {
		return fmt.Errorf("%w: volume %s is still published to node %s", csierr.ErrInUse, id, rec.Attachments[0].NodeID)
	}
	if err := b.removeImage(ctx, cr, ref); err != nil {
		return err
	}
	// Before the record goes: a retry after a failure here purges again.
	if p := b.parentOf(rec); p != nil {
		if err := b.purgeTrashed(ctx, cr, *p); err != nil {
			return err
		}
	}
	return b.index.remove(ctx, cr, volumeKeyPrefix+hash)
}

// removeImage removes an image; an image already gone is no error. rbd rm
// refuses, and changes nothing, while a client has the image open or it
// has snapshots. Snapshots of the user's make that FailedPrecondition;
// snapshots that only clones still need (in the trash namespace) send the
// image to the trash, until its last clone is gone (purgeTrashed).
func (b *Backend) removeImage(ctx context.Context, cr creds, ref imageRef) error {
	err := b.cl.Remove(ctx, cr, ref)
	if err == nil || errors.Is(err, KindNotFound) {
		return nil
	}
	if !errors.Is(err, KindBusy) {
		return err
	}
	w, werr := b.cl.Watchers(ctx, cr, ref)
	if werr != nil {
		return werr
	}
	if len(w) > 0 {
		return fmt.Errorf("%w: image %s is still open on %d client(s) (%v): a node has it attached", csierr.ErrInUse, ref, len(w), w)
	}
	snaps, serr := b.cl.Snapshots(ctx, cr, ref)
	if serr != nil {
		return serr
	}
	var user []string
	droppedTemp := false
	for _, s := range snaps {
		if s.Namespace != snapUser {
			continue
		}
		if strings.HasPrefix(s.Name, b.names.cloneSnapshot("")) {
			droppedTemp = true
			// A clone's temporary snapshot that a failed attempt left.
			snap := snapRef{ref, s.Name}
			if err := b.cl.SnapRemove(ctx, cr, snap); err != nil && !errors.Is(err, KindNotFound) {
				return err
			}
			continue
		}
		user = append(user, s.Name)
	}
	if len(user) > 0 {
		return csierr.Precondition("volume %s has snapshots (%v): delete them first", ref, user)
	}
	if droppedTemp {
		err = b.cl.Remove(ctx, cr, ref)
		if err == nil || errors.Is(err, KindNotFound) {
			return nil
		}
		if !errors.Is(err, KindBusy) {
			return err
		}
	} else if len(snaps) == 0 {
		return err // busy for another reason: say what rbd said
	}
	err = b.cl.TrashMove(ctx, cr, ref)
	if errors.Is(err, KindNotFound) {
		return nil
	}
	return err
}

// parentOf returns the image a volume was cloned from, if any.
func (b *Backend) parentOf(rec *volumeRecord) *imageRef {
	switch {
	case rec.Source == nil:
		return nil
	case rec.Source.SnapshotID != "":
		if ref, _, ok := b.names.parseSnapshotID(rec.Source.SnapshotID); ok {
			return &ref.imageRef
		}
	case rec.Source.VolumeID != "":
		if ref, _, ok := b.names.parseVolumeID(rec.Source.VolumeID); ok {
			return &ref
		}
	}
	return nil
}

// purgeTrashed removes, after a clone is gone, the image it was cloned from
// if that waits in the trash, and so on up the chain of parents. What
// cannot go yet (other clones remain) stays for the next clone's deletion.
func (b *Backend) purgeTrashed(ctx context.Context, cr creds, parent imageRef) error {
	for depth := 0; depth < 16; depth++ {
		if !b.names.ours(parent.image) || !poolPattern.MatchString(parent.pool) {
			return nil
		}
		entries, err := b.cl.Trash(ctx, cr, parent.pool)
		if err != nil {
			return err
		}
		id := ""
		for _, e := range entries {
			if e.Name == parent.image {
				id = e.ID
			}
		}
		if id == "" {
			return nil // not in the trash: still a volume, or gone
		}
		// Its own parent, before it goes.
		info, err := b.cl.TrashInfo(ctx, cr, parent.pool, id)
		if err != nil {
			return err
		}
		err = b.cl.TrashRemove(ctx, cr, parent.pool, id)
		if errors.Is(err, KindBusy) {
			return nil // other clones still need it
		}
		if err != nil && !errors.Is(err, KindNotFound) {
			return err
		}
		if info.Parent == nil {
			return nil
		}
		parent = imageRef{info.Parent.Pool, info.Parent.Image}
	}
	return nil
}

// Publish implements backend.Controller: the attachment is recorded in the
// volume's record; the node maps the image itself. v is the record as the
// controller has just read it: it is not read again. A single-node volume
// that no node has is first taken from the clients a lost node left on it
// (fence).
func (b *Backend) Publish(ctx context.Context, v *backend.Volume, a backend.Attachment) (map[string]string, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return nil, err
	}
	ref, hash, ok := b.names.parseVolumeID(v.ID)
	if !ok {
		return nil, csierr.NotFound("volume %q is not an rbd volume id of this cluster", v.ID)
	}
	rec := &volumeRecord{Volume: *v, Pool: ref.pool, Image: ref.image}
	if cur, ok := rec.AttachedTo(a.NodeID); !ok || cur != a {
		fenced := false
		if fences(v) {
			if fenced, err = b.fence(ctx, cr, ref, v, a.NodeID); err != nil {
				return nil, err
			}
		}
		if err := b.markAttachment(ctx, cr, a.NodeID, hash, v.ID); err != nil {
			return nil, err
		}
		rec.SetAttachment(a) // a new slice: v's stays as it was
		if err := b.index.set(ctx, cr, volumeKeyPrefix+hash, rec); err != nil {
			return nil, err
		}
		if fenced {
			if err := b.forget(ctx, cr, ref); err != nil {
				return nil, err
			}
		}
	}
	return publishContext(rec), nil
}

// publishContext tells the node the image and how it is formatted. The
// node reads the same from the index when Swarm sends no context.
func publishContext(r *volumeRecord) map[string]string {
	pc := map[string]string{"pool": r.Pool, "image": r.Image}
	if r.Block {
		pc["accessType"] = "block"
	} else {
		pc["accessType"], pc["fsType"] = "mount", r.FsType
	}
	return pc
}

// Unpublish implements backend.Controller. The record first, the key of
// the attachment after: a retry after a crash in between removes the key.
func (b *Backend) Unpublish(ctx context.Context, id, nodeID string) error {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return err
	}
	_, hash, ok := b.names.parseVolumeID(id)
	if !ok {
		return nil
	}
	var rec volumeRecord
	err = b.index.get(ctx, cr, volumeKeyPrefix+hash, &rec)
	switch {
	case errors.Is(err, KindNotFound):
	case err != nil:
		return err
	case rec.ID != id:
		return nil // the name's volume is another: the key is its own
	default:
		if _, ok := rec.AttachedTo(nodeID); ok {
			rec.RemoveAttachment(nodeID)
			if err := b.index.set(ctx, cr, volumeKeyPrefix+hash, &rec); err != nil {
				return err
			}
		}
	}
	if !backend.ValidNodeID(nodeID) {
		return nil // never marked
	}
	return b.index.remove(ctx, cr, attachmentKey(nodeID, hash))
}

// ExpandVolume implements backend.Expander. The image grows first, the
// record after, so a retry after a crash in between completes it.
func (b *Backend) ExpandVolume(ctx context.Context, id string, size int64) (int64, error) {
	cr, err := b.credsFor(ctx)
	if err != nil {
		return 0, err
	}
	rec, err := b.record(ctx, cr, id)
	if err != nil {
		return 0, err
	}
	if size <= rec.CapacityBytes {
		return rec.CapacityBytes, nil
	}
	ref := imageRef{rec.Pool, rec.Image}
	info, err := b.info(ctx, cr, ref)
	if err != nil {
		return 0, err
	}
	if info.Size < size {
		if err := b.cl.Resize(ctx, cr, ref, size); err != nil {
			return 0, err
		}
	}
	rec.CapacityBytes = size
	_, hash, _ := b.names.parseVolumeID(id)
	if err := b.index.set(ctx, cr, volumeKeyPrefix+hash, rec); err != nil {
		return 0, err
	}
	return size, nil
}

// checkMutable checks the values of mutable parameters: whole numbers.
// MutableParameters implements backend.Modifier.
func (b *Backend) MutableParameters() []string { return []string{ParamQoSIOPS, ParamQoSBPS} }

func checkMutable(params map[string]string) error {
	for k, v := range params {
		if _, ok := qosOptions[k]; !ok {
			return csierr.Invalid("mutable parameter %q is not supported; the rbd backend accepts: %s, %s", k, ParamQoSIOPS, ParamQoSBPS)
		}
		if _, err := strconv.ParseUint(v, 10, 63); err != nil {
			return csierr.Invalid("mutable parameter %s=%q: want a whole number, 0 for no limit", k, v)
		}
	}
	return nil
}

// applyMutable sets the image's QoS options (rbd config image set).
func (b *Backend) applyMutable(ctx context.Context, cr creds, ref imageRef, params map[string]string) error {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the same order on every retry
	for _, k := range keys {
		if err := b.cl.SetOption(ctx, cr, ref, qosOptions[k], params[k]); err != nil {
			return err
		}
	}
	return nil
}

// ModifyVolume implements backend.Modifier: the image's options change
// first, the record after.
func (b *Backend) ModifyVolume(ctx context.Context, id string, params map[string]string) error {
	if err := checkMutable(params); err != nil {
		return err
	}
	cr, err := b.credsFor(ctx)
	if err != nil {
		return err
	}
	rec, err := b.record(ctx, cr, id)
	if err != nil {
		return err
	}
	if err := b.applyMutable(ctx, cr, imageRef{rec.Pool, rec.Image}, params); err != nil {
		return err
	}
	if rec.MutableParameters == nil {
		rec.MutableParameters = map[string]string{}
	}
	maps.Copy(rec.MutableParameters, params)
	_, hash, _ := b.names.parseVolumeID(id)
	return b.index.set(ctx, cr, volumeKeyPrefix+hash, rec)
}
