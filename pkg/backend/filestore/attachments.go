package filestore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// AttachmentsDir is the index of attachments by node:
//
//	attachments/<node-id>/<volume-id>  empty file: the volume may be published to the node
//
// It holds a marker for every attachment the volume records list, and
// after a crash possibly more: a marker is durable before the record that
// lists its attachment, and removed only after the record that no longer
// does. Counting a node's attachments reads the records its markers name
// and no others, so it costs what the node has attached, not what the
// store holds; the markers a crash left behind are not counted, and go.
const AttachmentsDir = "attachments"

// IndexAttachments makes sure the attachment index exists. A data
// directory from before it gets one built from the volume records of
// volumesDir, once: aside, then renamed into place, so the index appears
// whole or not at all.
func (s *Store) IndexAttachments(volumesDir string, valid func(string) bool) error {
	index := s.Path(AttachmentsDir)
	_, err := os.Stat(index)
	if err == nil {
		return s.removeStaleIndexes()
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	tmp, err := os.MkdirTemp(s.Root, "."+AttachmentsDir+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // gone after the rename
	ids, err := s.ListIDs(volumesDir, valid)
	if err != nil {
		return err
	}
	nodes := map[string]bool{}
	for _, id := range ids {
		var v backend.Volume
		err := ReadJSON(s.Path(volumesDir, id+".json"), &v)
		if errors.Is(err, csierr.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		for _, a := range v.Attachments {
			if !backend.ValidNodeID(a.NodeID) {
				continue // counted for no node, and never a path
			}
			if !nodes[a.NodeID] {
				if err := os.Mkdir(filepath.Join(tmp, a.NodeID), 0o700); err != nil {
					return err
				}
				nodes[a.NodeID] = true
			}
			if err := os.WriteFile(filepath.Join(tmp, a.NodeID, id), nil, 0o600); err != nil {
				return err
			}
		}
	}
	for n := range nodes {
		if err := fsutil.SyncDir(filepath.Join(tmp, n)); err != nil {
			return err
		}
	}
	if err := fsutil.SyncDir(tmp); err != nil {
		return err
	}
	// Another process sharing the directory may have built it first.
	if err := os.Rename(tmp, index); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return err
	}
	return fsutil.SyncDir(s.Root)
}

// removeStaleIndexes removes what a build of the index that crashed left.
func (s *Store) removeStaleIndexes() error {
	stale, err := filepath.Glob(s.Path("." + AttachmentsDir + ".new-*"))
	if err != nil {
		return err
	}
	for _, d := range stale {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	return nil
}

// marker returns the path of the marker of volume id's attachment to
// nodeID.
func (s *Store) marker(nodeID, id string) (string, error) {
	if !backend.ValidNodeID(nodeID) {
		return "", csierr.Invalid("node id %q: use letters, digits, '.', '_' and '-' (at most 128)", nodeID)
	}
	return s.Path(AttachmentsDir, nodeID, id), nil
}

// recordID is the id of the record at path (<dir>/<id>.json).
func recordID(path string) string { return strings.TrimSuffix(filepath.Base(path), ".json") }

// SetAttachment records a in the volume record v read from path, unless it
// is there already. The marker in the index is made durable first.
func (s *Store) SetAttachment(path string, v *backend.Volume, a backend.Attachment) error {
	if cur, ok := v.AttachedTo(a.NodeID); ok && cur == a {
		return nil
	}
	m, err := s.marker(a.NodeID, recordID(path))
	if err != nil {
		return err
	}
	dir := filepath.Dir(m)
	if err := os.Mkdir(dir, 0o700); err == nil {
		if err := fsutil.SyncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return err
	}
	f, err := os.OpenFile(m, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Synced even when the marker was there: an attempt that failed
	// before its sync may have made it.
	if err := fsutil.SyncDir(dir); err != nil {
		return err
	}
	v.SetAttachment(a)
	return WriteJSON(path, v, fsutil.Durable)
}

// RemoveAttachment removes the node's attachment from the volume record v
// read from path, if it has one, then its marker.
func (s *Store) RemoveAttachment(path string, v *backend.Volume, nodeID string) error {
	if _, ok := v.AttachedTo(nodeID); ok {
		v.RemoveAttachment(nodeID)
		if err := WriteJSON(path, v, fsutil.Durable); err != nil {
			return err
		}
	}
	if !backend.ValidNodeID(nodeID) {
		return nil // never marked
	}
	return removeMarker(s.Path(AttachmentsDir, nodeID, recordID(path)))
}

// removeMarker needs no sync: a marker a crash brings back is not counted.
func removeMarker(m string) error {
	if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// NodeAttachments counts the volumes of volumesDir whose records list an
// attachment to nodeID, reading only the records the node's markers name,
// and removes the markers whose records do not list it. The caller keeps
// publishes to the node from running meanwhile (the controller holds the
// node's lock): none is then between its marker and its record.
func (s *Store) NodeAttachments(volumesDir, nodeID string, valid func(string) bool) (int64, error) {
	if !backend.ValidNodeID(nodeID) {
		return 0, nil
	}
	dir := s.Path(AttachmentsDir, nodeID)
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	ids, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, err
	}
	n := int64(0)
	for _, id := range ids {
		attached := false
		if valid(id) {
			var v backend.Volume
			err := ReadJSON(s.Path(volumesDir, id+".json"), &v)
			if err != nil && !errors.Is(err, csierr.ErrNotFound) {
				return 0, err
			}
			_, attached = v.AttachedTo(nodeID)
		}
		if attached {
			n++
		} else if err := removeMarker(filepath.Join(dir, id)); err != nil {
			return 0, err
		}
	}
	return n, nil
}
