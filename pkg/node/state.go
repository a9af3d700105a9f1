package node

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// staged is what the node remembers about a volume it has staged: enough
// to release it after the last NodeUnpublishVolume (Swarm sends no
// NodeUnstageVolume, SwarmKit PR #3178) and to find its mounts after a
// restart.
type staged struct {
	VolumeID    string   `json:"volumeId"`
	StagingPath string   `json:"stagingPath"`
	Block       bool     `json:"block,omitempty"`
	Targets     []string `json:"targets,omitempty"`
	// What the mounts were made with, to make them again after the mounts
	// are lost while the volume is still in use (Restore).
	AccessMode string          `json:"accessMode,omitempty"`
	MountFlags []string        `json:"mountFlags,omitempty"`
	ReadOnly   map[string]bool `json:"readOnly,omitempty"` // by target
}

func (s *staged) addTarget(t string) bool {
	if slices.Contains(s.Targets, t) {
		return false
	}
	s.Targets = append(s.Targets, t)
	return true
}

func (s *staged) removeTarget(t string) bool {
	i := slices.Index(s.Targets, t)
	if i < 0 {
		return false
	}
	s.Targets = slices.Delete(s.Targets, i, i+1)
	delete(s.ReadOnly, t)
	return true
}

// capability rebuilds the capability the volume was staged with.
func (s *staged) capability(fsType string) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: volcap.ParseMode(s.AccessMode)}}
	if s.Block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: s.MountFlags}}
	}
	return c
}

// stateStore keeps one small file per staged volume. The files are replaced
// atomically but not fsynced: they describe mounts and loop devices, which
// a machine crash takes away too, while a process crash keeps the page cache.
// What a machine crash can leave of a file written just before it, an empty
// file, is taken for no state: the mounts it described are gone as well.
type stateStore struct{ dir string }

func newStateStore(dir string) (*stateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("node state directory: %w", err)
	}
	return &stateStore{dir: dir}, nil
}

// file names a volume's state by a hash of its id, so no id from a request
// ever becomes a path.
func (s *stateStore) file(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(s.dir, hex.EncodeToString(sum[:16])+".json")
}

// load returns the volume's state, or nil.
func (s *stateStore) load(volumeID string) (*staged, error) {
	b, err := os.ReadFile(s.file(volumeID))
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st staged
	if err := json.Unmarshal(b, &st); err != nil || st.VolumeID != volumeID {
		return nil, fmt.Errorf("node state for volume %s is corrupt", volumeID)
	}
	return &st, nil
}

func (s *stateStore) save(st *staged) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return fsutil.WriteFile(s.file(st.VolumeID), b, 0o600, fsutil.Atomic)
}

// list returns every volume this node remembers.
func (s *stateStore) list() ([]*staged, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []*staged
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			continue
		}
		var st staged
		if err := json.Unmarshal(b, &st); err != nil || s.file(st.VolumeID) != filepath.Join(s.dir, e.Name()) {
			return nil, fmt.Errorf("node state file %s is corrupt", e.Name())
		}
		out = append(out, &st)
	}
	return out, nil
}

func (s *stateStore) remove(volumeID string) error {
	if err := os.Remove(s.file(volumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
