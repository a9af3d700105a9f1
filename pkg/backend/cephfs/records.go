package cephfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// The states of a volume record. Only a ready volume exists for the CSI
// calls; the others are a CreateVolume that a retry completes.
const (
	stateCreating = "creating"
	stateCloning  = "cloning"
	stateReady    = "ready"
)

// volumeRecord is a volume as the driver keeps it.
type volumeRecord struct {
	backend.Volume
	State string `json:"state"`
	// Path is the subvolume's path in the file system (getpath).
	Path string `json:"path,omitempty"`
	// CloneSnap is the snapshot a copy of a volume is cloned from, taken
	// for it on the source and removed once the clone completes.
	CloneSnap string `json:"cloneSnap,omitempty"`
	// CloneOf is the subvolume that snapshot is on.
	CloneOf string `json:"cloneOf,omitempty"`
}

func (b *Backend) getJSON(ctx context.Context, key string, v any) error {
	data, err := b.cl.Get(ctx, key)
	if err != nil {
		return b.cephErr(err, "record %s", key)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("record %s: %w", key, err)
	}
	return nil
}

func (b *Backend) putJSON(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.cephErr(b.cl.Put(ctx, key, data), "write record %s", key)
}

// readVolume returns a volume's record, ready or not; an id of another
// form, or no record, is ErrNotFound.
func (b *Backend) readVolume(ctx context.Context, id string) (*volumeRecord, error) {
	if !ValidVolumeID(id) {
		return nil, csierr.NotFound("volume %q is not a cephfs volume id", id)
	}
	r := &volumeRecord{}
	if err := b.getJSON(ctx, volumeKey(id), r); err != nil {
		return nil, err
	}
	return r, nil
}

// readSnapshot returns a snapshot's record.
func (b *Backend) readSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if !ValidSnapshotID(id) {
		return nil, csierr.NotFound("snapshot %q is not a cephfs snapshot id", id)
	}
	s := &backend.Snapshot{}
	if err := b.getJSON(ctx, snapshotKey(id), s); err != nil {
		return nil, err
	}
	return s, nil
}

// idFor returns the id recorded for a name, making and recording a new one
// if there is none. Calls for one name are serialised by the controller.
func (b *Backend) idFor(ctx context.Context, key, prefix string, valid func(string) bool) (string, error) {
	data, err := b.cl.Get(ctx, key)
	switch {
	case err == nil && valid(string(data)):
		return string(data), nil
	case err == nil:
		return "", fmt.Errorf("record %s holds %q, not an id", key, data)
	case !isKind(err, KindNotFound):
		return "", b.cephErr(err, "record %s", key)
	}
	id := newID(prefix)
	return id, b.cephErr(b.cl.Put(ctx, key, []byte(id)), "write record %s", key)
}

// forgetName removes a name's key if it still names id.
func (b *Backend) forgetName(ctx context.Context, key, id string) error {
	data, err := b.cl.Get(ctx, key)
	if isKind(err, KindNotFound) || (err == nil && string(data) != id) {
		return nil
	}
	if err != nil {
		return b.cephErr(err, "record %s", key)
	}
	return b.deleteKey(ctx, key)
}

func (b *Backend) deleteKey(ctx context.Context, key string) error {
	if err := b.cl.Delete(ctx, key); err != nil && !isKind(err, KindNotFound) {
		return b.cephErr(err, "delete record %s", key)
	}
	return nil
}

// recordFor returns the id recorded for a name under key (a new one, if
// there is none) and the record of that id: nil while it is not written.
func recordFor[T any](ctx context.Context, b *Backend, key, prefix string, valid func(string) bool, read func(context.Context, string) (*T, error)) (string, *T, error) {
	id, err := b.idFor(ctx, key, prefix, valid)
	if err != nil {
		return "", nil, err
	}
	r, err := read(ctx, id)
	if errors.Is(err, csierr.ErrNotFound) {
		return id, nil, nil
	}
	return id, r, err
}

// readAll reads the records whose keys start with prefix, in the order of
// their ids; one deleted meanwhile is left out.
func readAll[T any](ctx context.Context, b *Backend, prefix string, read func(context.Context, string) (*T, error)) ([]*T, error) {
	ctx, cancel := b.call(ctx)
	defer cancel()
	ids, err := b.keys(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return backend.ReadEach(ids, func(id string) (*T, error) { return read(ctx, id) })
}

// keys lists the ids of the records whose keys start with prefix, sorted.
func (b *Backend) keys(ctx context.Context, prefix string) ([]string, error) {
	keys, err := b.cl.Keys(ctx, prefix)
	if err != nil {
		return nil, b.cephErr(err, "list records")
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, strings.TrimPrefix(k, prefix))
	}
	slices.Sort(ids)
	return ids, nil
}
