package loop

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// Layout of the data directory. Everything about a volume lives here, so a
// data directory on a filesystem shared by all nodes lets volumes move.
//
//	volumes/<id>.json    volume record (written atomically)
//	volumes/<id>.img     sparse image file
//	snapshots/<id>.json  snapshot record
//	snapshots/<id>.img   snapshot image
//	names/vol-<sha256>   symlink from a volume name to its id
//	names/snap-<sha256>  symlink from a snapshot name to its id
//	nodes/<node-id>/     one directory per registered node
//	store-id             random id naming this data directory
const (
	volumesDir   = "volumes"
	snapshotsDir = "snapshots"
	namesDir     = "names"
	nodesDir     = "nodes"

	volumePrefix   = "vol-"
	snapshotPrefix = "snap-"
)

var (
	volumeIDPattern   = regexp.MustCompile(`^vol-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^snap-[0-9a-f]{32}$`)
)

// ValidVolumeID reports whether id has the form of this backend's volume ids.
// Only ids that pass it are ever turned into paths.
func ValidVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// ValidSnapshotID reports whether id has the form of this backend's snapshot ids.
func ValidSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

func newID(prefix string) (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(b), nil
}

// store is the data directory.
type store struct {
	root string
	// id names the data directory; nodes that share it report it as
	// their topology.
	id string
}

func openStore(root string) (*store, error) {
	if root == "" || !filepath.IsAbs(root) {
		return nil, fmt.Errorf("data directory %q must be an absolute path", root)
	}
	for _, d := range []string{volumesDir, snapshotsDir, namesDir, nodesDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	s := &store{root: filepath.Clean(root)}
	id, err := s.loadOrCreateID()
	if err != nil {
		return nil, fmt.Errorf("data directory id: %w", err)
	}
	s.id = id
	return s, nil
}

var storeIDPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// loadOrCreateID returns the data directory's id, creating it on first use.
// The first of several nodes to start on a shared directory wins the link.
func (s *store) loadOrCreateID() (string, error) {
	path := s.path("store-id")
	id, err := os.Readlink(path)
	if errors.Is(err, fs.ErrNotExist) {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		if err := os.Symlink(hex.EncodeToString(b), path); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		if err := fsutil.SyncDir(s.root); err != nil {
			return "", err
		}
		id, err = os.Readlink(path)
	}
	if err != nil {
		return "", err
	}
	if !storeIDPattern.MatchString(id) {
		return "", fmt.Errorf("%s holds %q, not a store id", path, id)
	}
	return id, nil
}

func (s *store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

func (s *store) volumeRecord(id string) string   { return s.path(volumesDir, id+".json") }
func (s *store) volumeImage(id string) string    { return s.path(volumesDir, id+".img") }
func (s *store) snapshotRecord(id string) string { return s.path(snapshotsDir, id+".json") }
func (s *store) snapshotImage(id string) string  { return s.path(snapshotsDir, id+".img") }

// nameLink returns the path of the symlink that maps a name to an id. Names
// are hashed, so any string is safe.
func (s *store) nameLink(prefix, name string) string {
	sum := sha256.Sum256([]byte(name))
	return s.path(namesDir, prefix+hex.EncodeToString(sum[:]))
}

// lookupName returns the id a name maps to, or "".
func (s *store) lookupName(prefix, name string, valid func(string) bool) (string, error) {
	id, err := os.Readlink(s.nameLink(prefix, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if !valid(id) {
		return "", fmt.Errorf("name index for %q holds a foreign id %q", name, id)
	}
	return id, nil
}

// claimName maps name to id. The symlink is created atomically; if the name
// is taken already, the id it maps to is returned instead. The link is made
// durable by addRecord, before the record that needs it.
func (s *store) claimName(prefix, name, id string, valid func(string) bool) (string, error) {
	err := os.Symlink(id, s.nameLink(prefix, name))
	if errors.Is(err, fs.ErrExist) {
		return s.lookupName(prefix, name, valid)
	}
	if err != nil {
		return "", err
	}
	return id, nil
}

// addRecord writes the record that makes a new volume or snapshot exist,
// once its name is claimed and its image built, and makes them durable with
// three syncs, each needed: the names directory before the record is
// renamed into place (a record whose name link a crash lost would let a
// retry create a second volume under the same name), the record's content
// before its rename (else a crash could leave an empty record), and the
// record's directory last, which makes the record and the image's rename
// durable together.
func (s *store) addRecord(path string, v any) error {
	if err := fsutil.SyncDir(s.path(namesDir)); err != nil {
		return err
	}
	if err := writeJSON(path, v, fsutil.DataSynced); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(path))
}

// releaseName removes the name mapping if it still maps to id. The removal
// is synced before the record is removed: a crash in between must leave the
// record, which a retried delete finds, not a name that a CreateVolume of
// the same name would take up again under the deleted volume's id.
func (s *store) releaseName(prefix, name, id string) error {
	link := s.nameLink(prefix, name)
	if cur, err := os.Readlink(link); err != nil || cur != id {
		return nil
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(link))
}

// readJSON reads a record; a missing file is a NotFound error.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return csierr.NotFound("%s does not exist", filepath.Base(strings.TrimSuffix(path, ".json")))
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("record %s is corrupt: %w", path, err)
	}
	return nil
}

// writeJSON replaces a record atomically, as durably as d says. A changed
// record is Durable before the call returns: an attachment lost in a crash
// after the CO was told of it would let a second node publish a
// single-writer volume, an unpublish lost would keep the volume from
// being deleted or moved.
func writeJSON(path string, v any, d fsutil.Durability) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFile(path, append(b, '\n'), 0o600, d)
}

// removeFiles removes files, ignoring ones that are gone, then syncs their
// directory: a record a crash brought back after its delete succeeded would
// be a volume the CO has forgotten.
func removeFiles(paths ...string) error {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if len(paths) == 0 {
		return nil
	}
	return fsutil.SyncDir(filepath.Dir(paths[0]))
}

// listIDs returns the ids of the records in dir that are valid, sorted.
func (s *store) listIDs(dir string, valid func(string) bool) ([]string, error) {
	entries, err := os.ReadDir(s.path(dir))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && valid(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
