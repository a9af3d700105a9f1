package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// The index keeps the driver's records in Ceph itself, as the image
// metadata of one small image (<prefix>-index, size 0) in the default pool:
// one key per volume, snapshot, node and attachment. Each record is
// replaced whole by one metadata set, which Ceph applies atomically. The
// keys are kept in order in the omap of the image's header, so a listing
// reads one prefix from a given key on, as many keys as it asks for,
// however many volumes there are. The records hold no secrets.
//
//	vol.<hash>          volumeRecord of the volume named by hash
//	snap.<hash>         snapshotRecord
//	node.<id>           a registered node
//	att.<node>/<hash>   the volume named by hash may be attached to the node
//	                    (its id); see attachments.go
//	att-indexed         every attachment has its att. key
const (
	volumeKeyPrefix     = "vol."
	snapshotKeyPrefix   = "snap."
	nodeKeyPrefix       = "node."
	attachmentKeyPrefix = "att."
	attIndexedKey       = "att-indexed"
)

// metaChunk is how many keys one read of a listing asks for at most.
const metaChunk = 1024

// volumeRecord is a volume: its CSI form and its image.
type volumeRecord struct {
	backend.Volume
	Pool  string `json:"pool"`
	Image string `json:"image"`
}

// snapshotRecord is a snapshot: its CSI form and its rbd snapshot.
type snapshotRecord struct {
	backend.Snapshot
	Pool  string `json:"pool"`
	Image string `json:"image"`
	Snap  string `json:"snap"`
}

type index struct {
	cl    cluster
	image imageRef
}

// get reads one record into v; a missing key (or index) is KindNotFound.
func (x *index) get(ctx context.Context, cr creds, key string, v any) error {
	out, err := x.cl.MetaGet(ctx, cr, x.image, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("record %s in %s is corrupt: %w", key, x.image, err)
	}
	return nil
}

// set writes one record, creating the index on first use.
func (x *index) set(ctx context.Context, cr creds, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	err = x.cl.MetaSet(ctx, cr, x.image, key, string(b))
	if errors.Is(err, KindNotFound) {
		if err := x.create(ctx, cr); err != nil {
			return err
		}
		err = x.cl.MetaSet(ctx, cr, x.image, key, string(b))
	}
	return err
}

// create makes the index image: size 0, no features, so that no lock is
// ever taken on it.
func (x *index) create(ctx context.Context, cr creds) error {
	err := x.cl.Create(ctx, cr, x.image, 0, imageOptions{Features: "layering"})
	if errors.Is(err, KindExists) {
		return nil
	}
	return err
}

// remove deletes a record; a missing one is no error.
func (x *index) remove(ctx context.Context, cr creds, key string) error {
	err := x.cl.MetaRemove(ctx, cr, x.image, key)
	if errors.Is(err, KindNotFound) {
		return nil
	}
	return err
}

// setAll writes several records at once, atomically, creating the index
// on first use.
func (x *index) setAll(ctx context.Context, cr creds, recs map[string]any) error {
	kv := make(map[string]string, len(recs))
	for k, v := range recs {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		kv[k] = string(b)
	}
	err := x.cl.MetaSetKeys(ctx, cr, x.image, kv)
	if errors.Is(err, KindNotFound) {
		if err := x.create(ctx, cr); err != nil {
			return err
		}
		err = x.cl.MetaSetKeys(ctx, cr, x.image, kv)
	}
	return err
}

// getAll reads the records of those of keys that exist into new values
// of T, by key, in one read.
func getAll[T any](ctx context.Context, x *index, cr creds, keys []string) (map[string]*T, error) {
	raw, err := x.cl.MetaGetKeys(ctx, cr, x.image, keys)
	if errors.Is(err, KindNotFound) {
		return nil, nil // no index yet: nothing recorded
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]*T, len(raw))
	for k, v := range raw {
		if out[k], err = decode[T](x, k, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func decode[T any](x *index, key, value string) (*T, error) {
	var r T
	if err := json.Unmarshal([]byte(value), &r); err != nil {
		return nil, fmt.Errorf("record %s in %s is corrupt: %w", key, x.image, err)
	}
	return &r, nil
}

// keys returns, in order, every key that starts with prefix.
func (x *index) keys(ctx context.Context, cr creds, prefix string) ([]string, error) {
	raw, _, err := x.cl.MetaList(ctx, cr, x.image, prefix, "", 0)
	if errors.Is(err, KindNotFound) {
		return nil, nil
	}
	keys := make([]string, len(raw))
	for i, e := range raw {
		keys[i] = e.Key
	}
	return keys, err
}

// page reads, in key order, the records whose keys start with prefix and
// sort after after (""; from the first), into new values of T: those that
// keep accepts (nil: all), at most limit of them (0: all), and whether more
// follow. It reads the index a part at a time, from after on, until the
// page is full and one more record is found: a page of a few costs a few
// records, not the index.
func page[T any](ctx context.Context, x *index, cr creds, prefix, after string, limit int, keep func(*T) bool) ([]*T, bool, error) {
	var out []*T
	n := 0
	for {
		if limit > 0 {
			// One more than the page needs tells whether more follow;
			// a filter that leaves many out reads more each time.
			n = min(metaChunk, max(n*2, limit-len(out)+1))
		}
		raw, more, err := x.cl.MetaList(ctx, cr, x.image, prefix, after, n)
		if errors.Is(err, KindNotFound) {
			return nil, false, nil // no index yet: nothing recorded
		}
		if err != nil {
			return nil, false, err
		}
		for _, e := range raw {
			r, err := decode[T](x, e.Key, e.Value)
			if err != nil {
				return nil, false, err
			}
			if keep != nil && !keep(r) {
				continue
			}
			if limit > 0 && len(out) == limit {
				return out, true, nil
			}
			out = append(out, r)
		}
		if !more || len(raw) == 0 {
			return out, false, nil
		}
		after = raw[len(raw)-1].Key
	}
}

// volumes returns every volume record, sorted by id.
func (x *index) volumes(ctx context.Context, cr creds) ([]*volumeRecord, error) {
	recs, _, err := page[volumeRecord](ctx, x, cr, volumeKeyPrefix, "", 0, nil)
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, err
}

// snapshots returns every snapshot record, sorted by id.
func (x *index) snapshots(ctx context.Context, cr creds) ([]*snapshotRecord, error) {
	recs, _, err := page[snapshotRecord](ctx, x, cr, snapshotKeyPrefix, "", 0, nil)
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, err
}
