// Package filestore keeps a backend's records in a data directory: JSON
// records replaced atomically, names mapped to ids by symlinks, and a store
// id naming the directory. A data directory on a filesystem every node
// mounts lets the nodes share it. The loop and dir backends keep their
// state this way.
package filestore

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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// Layout every store shares:
//
//	names/<prefix><sha256>  symlink from a name to its id
//	nodes/<node-id>/        one directory per registered node
//	attachments/            the attachments by node (IndexAttachments)
//	store-id                symlink to the random id naming this directory
const (
	NamesDir = "names"
	NodesDir = "nodes"
	IDFile   = "store-id"

	// TopologyKey is the topology segment naming the data directory by its
	// id: nodes that share it reach the same volumes.
	TopologyKey = "swarm-csi/store"
)

// Store is a data directory.
type Store struct {
	Root string
	// ID names the data directory; nodes that share it report it as
	// their topology.
	ID string

	mu       sync.Mutex
	listings map[string]*listing // by directory, see recordIDs
}

// Open opens the data directory at root, creating it, its names and nodes
// directories, the directories dirs and its id where missing.
func Open(root string, dirs ...string) (*Store, error) {
	if root == "" || !filepath.IsAbs(root) {
		return nil, fmt.Errorf("data directory %q must be an absolute path", root)
	}
	for _, d := range append([]string{NamesDir, NodesDir}, dirs...) {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	s := &Store{Root: filepath.Clean(root)}
	id, err := s.loadOrCreateID()
	if err != nil {
		return nil, fmt.Errorf("data directory id: %w", err)
	}
	s.ID = id
	return s, nil
}

var storeIDPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ReadID returns the id the data directory at root carries, or an error
// wrapping fs.ErrNotExist when it carries none.
func ReadID(root string) (string, error) {
	path := filepath.Join(root, IDFile)
	id, err := os.Readlink(path)
	if err != nil {
		return "", err
	}
	if !storeIDPattern.MatchString(id) {
		return "", fmt.Errorf("%s holds %q, not a store id", path, id)
	}
	return id, nil
}

// loadOrCreateID returns the data directory's id, creating it on first use.
// The first of several nodes to start on a shared directory wins the link.
func (s *Store) loadOrCreateID() (string, error) {
	id, err := ReadID(s.Root)
	if !errors.Is(err, fs.ErrNotExist) {
		return id, err
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	if err := os.Symlink(hex.EncodeToString(b), s.Path(IDFile)); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if err := fsutil.SyncDir(s.Root); err != nil {
		return "", err
	}
	return ReadID(s.Root)
}

// Path joins elem to the data directory.
func (s *Store) Path(elem ...string) string {
	return filepath.Join(append([]string{s.Root}, elem...)...)
}

// NewID returns prefix followed by 32 random hex digits.
func NewID(prefix string) (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(b), nil
}

// NameLink returns the path of the symlink that maps a name to an id. Names
// are hashed, so any string is safe.
func (s *Store) NameLink(prefix, name string) string {
	sum := sha256.Sum256([]byte(name))
	return s.Path(NamesDir, prefix+hex.EncodeToString(sum[:]))
}

// LookupName returns the id a name maps to, or "".
func (s *Store) LookupName(prefix, name string, valid func(string) bool) (string, error) {
	id, err := os.Readlink(s.NameLink(prefix, name))
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

// ClaimName maps name to id. The symlink is created atomically; if the name
// is taken already, the id it maps to is returned instead. The link is made
// durable by AddRecord, before the record that needs it.
func (s *Store) ClaimName(prefix, name, id string, valid func(string) bool) (string, error) {
	err := os.Symlink(id, s.NameLink(prefix, name))
	if errors.Is(err, fs.ErrExist) {
		return s.LookupName(prefix, name, valid)
	}
	if err != nil {
		return "", err
	}
	return id, nil
}

// AddRecord writes the record that makes a new volume or snapshot exist,
// once its name is claimed and its content built, and makes them durable
// with three syncs, each needed: the names directory before the record is
// renamed into place (a record whose name link a crash lost would let a
// retry create a second volume under the same name), the record's content
// before its rename (else a crash could leave an empty record), and the
// record's directory last, which makes the record and the content's rename
// durable together.
func (s *Store) AddRecord(path string, v any) error {
	if err := fsutil.SyncDir(s.Path(NamesDir)); err != nil {
		return err
	}
	if err := WriteJSON(path, v, fsutil.DataSynced); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(path))
}

// ReleaseName removes the name mapping if it still maps to id. The removal
// is synced before the record is removed: a crash in between must leave the
// record, which a retried delete finds, not a name that a creation of the
// same name would take up again under the deleted id.
func (s *Store) ReleaseName(prefix, name, id string) error {
	link := s.NameLink(prefix, name)
	cur, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && cur != id) {
		return nil
	}
	if err != nil { // not known to be gone: the delete stops here
		return fmt.Errorf("name %q: %w", name, err)
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(link))
}

// Find returns the id a name maps to ("" if none) and its record, read by
// read, or nil when the record does not exist: the name was claimed by a
// creation that did not finish, which the caller resumes under that id.
func Find[T any](s *Store, prefix, name string, valid func(string) bool, read func(string) (*T, error)) (string, *T, error) {
	id, err := s.LookupName(prefix, name, valid)
	if err != nil || id == "" {
		return id, nil, err
	}
	r, err := read(id)
	if errors.Is(err, csierr.ErrNotFound) {
		return id, nil, nil
	}
	return id, r, err
}

// Named returns the record a name maps to, or an ErrNotFound error: for a
// name never claimed, and for one whose creation has not finished.
func Named[T any](s *Store, prefix, name string, valid func(string) bool, read func(string) (*T, error)) (*T, error) {
	_, r, err := Find(s, prefix, name, valid, read)
	if err == nil && r == nil {
		err = csierr.NotFound("nothing is named %q", name)
	}
	return r, err
}

// ClaimNew maps name to a new id made of idPrefix and random digits, and
// returns it; an id found by Find already is returned as it is. Of two
// concurrent claims, both get the winner's id.
func (s *Store) ClaimNew(prefix, name, id, idPrefix string, valid func(string) bool) (string, error) {
	if id != "" {
		return id, nil
	}
	id, err := NewID(idPrefix)
	if err != nil {
		return "", err
	}
	return s.ClaimName(prefix, name, id, valid)
}

// ReadAll reads the records of dir whose ids are valid, sorted by id;
// those deleted meanwhile are left out.
func ReadAll[T any](s *Store, dir string, valid func(string) bool, read func(string) (*T, error)) ([]*T, error) {
	ids, err := s.ListIDs(dir, valid)
	if err != nil {
		return nil, err
	}
	return backend.ReadEach(ids, read)
}

// ReadPage reads, in id order, the records of dir whose ids sort after
// after and that keep accepts (nil: all), at most max of them (0: no
// limit), and reports whether more follow. The directory is listed once,
// by name; only the records from after on are read, until the page is full
// and one more is found. Those deleted meanwhile are left out.
func ReadPage[T any](s *Store, dir string, valid func(string) bool, read func(string) (*T, error), after string, max int, keep func(*T) bool) ([]*T, bool, error) {
	ids, err := s.recordIDs(dir)
	if err != nil {
		return nil, false, err
	}
	var out []*T
	for _, id := range ids[sort.SearchStrings(ids, after+"\x00"):] {
		if !valid(id) {
			continue
		}
		r, err := read(id)
		if errors.Is(err, csierr.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if keep != nil && !keep(r) {
			continue
		}
		if max > 0 && len(out) == max {
			return out, true, nil
		}
		out = append(out, r)
	}
	return out, false, nil
}

// ListIDs returns the ids of the records (<id>.json) in dir that are
// valid, sorted.
func (s *Store) ListIDs(dir string, valid func(string) bool) ([]string, error) {
	ids, err := s.recordIDs(dir)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !valid(id) }), nil
}

// recordIDs returns the names of the records (<id>.json) in dir without
// their suffix, sorted, from one listing of the directory by name. The
// listing is kept while the directory stays unchanged, so that paging
// through a large one reads it once; the result must not be modified.
func (s *Store) recordIDs(dir string) ([]string, error) {
	path := s.Path(dir)
	before, mtime, err := stampOf(path)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	l := s.listings[dir]
	s.mu.Unlock()
	if l != nil && l.stamp == before {
		return l.ids, nil
	}
	ids, err := listRecordIDs(path)
	if err != nil {
		return nil, err
	}
	// A change within the granularity of the timestamps after the stamp
	// was taken would leave it as it is: only a directory that has not
	// changed for a while is kept.
	if time.Since(mtime) > settled {
		s.mu.Lock()
		if s.listings == nil {
			s.listings = map[string]*listing{}
		}
		s.listings[dir] = &listing{stamp: before, ids: ids}
		s.mu.Unlock()
	}
	return ids, nil
}

// settled is how long a directory must have been unchanged for its listing
// to be kept: far beyond the granularity of file timestamps.
const settled = 2 * time.Second

// listing is a directory's record ids, listed when it had stamp.
type listing struct {
	stamp dirStamp
	ids   []string
}

// dirStamp changes whenever an entry of the directory does.
type dirStamp struct {
	dev, ino     uint64
	mtime, ctime unix.Timespec
}

func stampOf(path string) (dirStamp, time.Time, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return dirStamp{}, time.Time{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return dirStamp{dev: st.Dev, ino: st.Ino, mtime: st.Mtim, ctime: st.Ctim}, time.Unix(st.Mtim.Unix()), nil
}

func listRecordIDs(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	ids := names[:0]
	for _, n := range names {
		if id, ok := strings.CutSuffix(n, ".json"); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// ReadJSON reads a record; a missing file is a NotFound error.
func ReadJSON(path string, v any) error {
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

// WriteJSON replaces a record atomically, as durably as d says. A changed
// record is Durable before the call returns: an attachment lost in a crash
// after the CO was told of it would let a second node publish a
// single-writer volume, an unpublish lost would keep the volume from being
// deleted or moved.
func WriteJSON(path string, v any, d fsutil.Durability) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFile(path, append(b, '\n'), 0o600, d)
}

// RemoveFiles removes files, ignoring ones that are gone, then syncs the
// directory of the first: a record a crash brought back after its delete
// succeeded would be a volume the CO has forgotten.
func RemoveFiles(paths ...string) error {
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

// Free returns the bytes available on the data directory's filesystem.
func (s *Store) Free() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.Root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.Root, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// Register records a node as one of the cluster's.
func (s *Store) Register(nodeID string) error {
	if !backend.ValidNodeID(nodeID) {
		return csierr.Invalid("node id %q: use letters, digits, '.', '_' and '-' (at most 128)", nodeID)
	}
	return os.MkdirAll(s.Path(NodesDir, nodeID), 0o700)
}

// NodeKnown reports whether a node has registered.
func (s *Store) NodeKnown(nodeID string) (bool, error) {
	if !backend.ValidNodeID(nodeID) {
		return false, nil
	}
	fi, err := os.Stat(s.Path(NodesDir, nodeID))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}
