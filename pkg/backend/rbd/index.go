package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// The index keeps the driver's records in Ceph itself, as the image
// metadata of one small image (<prefix>-index, size 0) in the default pool:
// one key per volume, snapshot and node. Each record is replaced whole by
// one metadata set, which Ceph applies atomically, and a listing is one
// metadata list, however many volumes there are. The records hold no
// secrets.
//
//	vol.<hash>   volumeRecord of the volume named by hash
//	snap.<hash>  snapshotRecord
//	node.<id>    a registered node
const (
	volumeKeyPrefix   = "vol."
	snapshotKeyPrefix = "snap."
	nodeKeyPrefix     = "node."
)

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

// list returns every record whose key starts with prefix, raw, by key.
func (x *index) list(ctx context.Context, cr creds, prefix string) (map[string]string, error) {
	all, err := x.cl.MetaList(ctx, cr, x.image)
	if errors.Is(err, KindNotFound) {
		return nil, nil // no index yet: nothing recorded
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range all {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out, nil
}

// volumes returns every volume record, sorted by id.
func (x *index) volumes(ctx context.Context, cr creds) ([]*volumeRecord, error) {
	raw, err := x.list(ctx, cr, volumeKeyPrefix)
	if err != nil {
		return nil, err
	}
	recs := make([]*volumeRecord, 0, len(raw))
	for k, v := range raw {
		var r volumeRecord
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			return nil, fmt.Errorf("record %s in %s is corrupt: %w", k, x.image, err)
		}
		recs = append(recs, &r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, nil
}

// snapshots returns every snapshot record, sorted by id.
func (x *index) snapshots(ctx context.Context, cr creds) ([]*snapshotRecord, error) {
	raw, err := x.list(ctx, cr, snapshotKeyPrefix)
	if err != nil {
		return nil, err
	}
	recs := make([]*snapshotRecord, 0, len(raw))
	for k, v := range raw {
		var r snapshotRecord
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			return nil, fmt.Errorf("record %s in %s is corrupt: %w", k, x.image, err)
		}
		recs = append(recs, &r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, nil
}
