package loop

import (
	"fmt"
	"regexp"

	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
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

func (s *store) volumeRecord(id string) string   { return s.Path(volumesDir, id+".json") }
func (s *store) volumeImage(id string) string    { return s.Path(volumesDir, id+".img") }
func (s *store) snapshotRecord(id string) string { return s.Path(snapshotsDir, id+".json") }
func (s *store) snapshotImage(id string) string  { return s.Path(snapshotsDir, id+".img") }
