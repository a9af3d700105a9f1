package loop

import (
	"fmt"
	"regexp"

	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Layout of the data directory, beside what every filestore.Store keeps
// (names, nodes, attachments, store-id). Everything about a volume lives
// here, so a data directory on a filesystem shared by all nodes lets
// volumes move.
//
//	volumes/<id>.json    volume record (written atomically)
//	volumes/<id>.img     sparse image file
//	snapshots/<id>.json  snapshot record
//	snapshots/<id>.img   snapshot image
//	names/vol-<sha256>   symlink from a volume name to its id
//	names/snap-<sha256>  symlink from a snapshot name to its id
const (
	volumesDir   = "volumes"
	snapshotsDir = "snapshots"

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

// store is the data directory.
type store struct{ *filestore.Store }

func openStore(root string) (*store, error) {
	s, err := filestore.Open(root, volumesDir, snapshotsDir)
	if err != nil {
		return nil, err
	}
	if err := s.IndexAttachments(volumesDir, ValidVolumeID); err != nil {
		return nil, fmt.Errorf("attachment index: %w", err)
	}
	return &store{s}, nil
}

// kind is one of the two sorts of record the data directory keeps, each
// beside its image: volumes and snapshots.
type kind struct {
	name, dir, prefix string
	valid             func(string) bool
}

var (
	volumes   = kind{"volume", volumesDir, volumePrefix, ValidVolumeID}
	snapshots = kind{"snapshot", snapshotsDir, snapshotPrefix, ValidSnapshotID}
)

func (s *store) record(k kind, id string) string { return s.Path(k.dir, id+".json") }
func (s *store) image(k kind, id string) string  { return s.Path(k.dir, id+".img") }

func (s *store) volumeRecord(id string) string   { return s.record(volumes, id) }
func (s *store) volumeImage(id string) string    { return s.image(volumes, id) }
func (s *store) snapshotRecord(id string) string { return s.record(snapshots, id) }
func (s *store) snapshotImage(id string) string  { return s.image(snapshots, id) }

// readRecord reads the record id of kind k; an id of another form is
// NotFound, and is never made a path.
func readRecord[T any](s *store, k kind, id string) (*T, error) {
	if !k.valid(id) {
		return nil, csierr.NotFound("%s %q is not a loop %s id", k.name, id, k.name)
	}
	var r T
	if err := filestore.ReadJSON(s.record(k, id), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// removeRemains removes what a creation of id that never finished left,
// its image whole or in part; an id of another form has none.
func (s *store) removeRemains(k kind, id string) error {
	if !k.valid(id) {
		return nil
	}
	return filestore.RemoveFiles(s.image(k, id), partial(s.image(k, id)))
}

// remove deletes the record id of kind k, named name, and its image. The
// name is released first: a crash after it leaves a record that a retried
// delete still finds, and never a name pointing nowhere.
func (s *store) remove(k kind, id, name string) error {
	if err := s.ReleaseName(k.prefix, name, id); err != nil {
		return err
	}
	return filestore.RemoveFiles(s.image(k, id), partial(s.image(k, id)), s.record(k, id))
}
