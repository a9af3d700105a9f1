package rbd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// The index of attachments by node: a key att.<node>/<hash> for every
// attachment the volume records list, and after a crash possibly more. A
// publish writes the key before the record that lists the attachment, an
// unpublish removes it after the record that no longer does. Counting a
// node's attachments lists the node's keys alone (one read from its
// prefix on) and reads the records they name (one more), so it costs
// what the node has attached, not what the index holds; keys whose
// records do not list the node (a crash between the two writes) are not
// counted, and go.
//
// An index written before these keys existed gets them once, from its
// records, when the first count finds no att-indexed key (see
// indexAttachments).

// attachmentKey is the key of the attachment of the volume named by hash
// to nodeID, a valid node id: no '/' in it, so no node's keys start with
// another's prefix.
func attachmentKey(nodeID, hash string) string {
	return attachmentPrefix(nodeID) + hash
}

func attachmentPrefix(nodeID string) string { return attachmentKeyPrefix + nodeID + "/" }

// attachmentIndex remembers that the index has its attachment keys.
type attachmentIndex struct {
	mu    sync.Mutex
	built bool
}

// NodeAttachments implements backend.AttachmentCounter. The caller keeps
// publishes to the node from running meanwhile (the controller holds the
// node's lock): none is then between its key and its record.
func (b *Backend) NodeAttachments(ctx context.Context, nodeID string) (int64, error) {
	if !backend.ValidNodeID(nodeID) {
		return 0, nil
	}
	cr, err := b.credsFor(ctx)
	if err != nil {
		return 0, err
	}
	if err := b.indexAttachments(ctx, cr); err != nil {
		return 0, err
	}
	marks, err := b.index.keys(ctx, cr, attachmentPrefix(nodeID))
	if err != nil || len(marks) == 0 {
		return 0, err
	}
	keys := make([]string, len(marks))
	for i, m := range marks {
		keys[i] = volumeKeyPrefix + strings.TrimPrefix(m, attachmentPrefix(nodeID))
	}
	recs, err := getAll[volumeRecord](ctx, b.index, cr, keys)
	if err != nil {
		return 0, err
	}
	n := int64(0)
	for i, m := range marks {
		if r := recs[keys[i]]; r != nil {
			if _, ok := r.AttachedTo(nodeID); ok {
				n++
				continue
			}
		}
		if err := b.index.remove(ctx, cr, m); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// markAttachment writes the key of the attachment of the volume id (named
// by hash) to nodeID, before the record that lists it.
func (b *Backend) markAttachment(ctx context.Context, cr creds, nodeID, hash, id string) error {
	if !backend.ValidNodeID(nodeID) {
		return csierr.Invalid("node id %q: use letters, digits, '.', '_' and '-' (at most 128)", nodeID)
	}
	return b.index.set(ctx, cr, attachmentKey(nodeID, hash), id)
}

// attIndexed is the value of the att-indexed key.
type attIndexed struct {
	At time.Time `json:"at"`
}

// indexAttachments makes sure every attachment has its key: an index
// written before the keys existed gets them from its records, with the
// att-indexed key, in one atomic write. Keys for attachments an unpublish
// removes meanwhile are left over, and go at the next count, as after a
// crash; publishes meanwhile write their own.
func (b *Backend) indexAttachments(ctx context.Context, cr creds) error {
	b.attIndex.mu.Lock()
	defer b.attIndex.mu.Unlock()
	if b.attIndex.built {
		return nil
	}
	var done attIndexed
	err := b.index.get(ctx, cr, attIndexedKey, &done)
	if err == nil {
		b.attIndex.built = true
		return nil
	}
	if !errors.Is(err, KindNotFound) {
		return err
	}
	recs, err := b.index.volumes(ctx, cr)
	if err != nil {
		return err
	}
	write := map[string]any{attIndexedKey: attIndexed{At: b.now().UTC()}}
	for _, r := range recs {
		_, hash, ok := b.names.parseVolumeID(r.ID)
		if !ok {
			continue
		}
		for _, a := range r.Attachments {
			if backend.ValidNodeID(a.NodeID) {
				write[attachmentKey(a.NodeID, hash)] = r.ID
			}
		}
	}
	if err := b.index.setAll(ctx, cr, write); err != nil {
		return err
	}
	if n := len(write) - 1; n > 0 {
		b.cfg.Log.Info("indexed the attachments by node", "attachments", n, "volumes", len(recs))
	}
	b.attIndex.built = true
	return nil
}
