package filestore

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
)

// openIndexed opens the data directory at root with its attachment index,
// as the loop and dir backends do, and fails the test on error.
func openIndexed(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(root, "vols")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.IndexAttachments("vols", valid); err != nil {
		t.Fatal(err)
	}
	return s
}

// addVolume writes the record of a new volume and returns it with its path.
func addVolume(t *testing.T, s *Store, n int) (*backend.Volume, string) {
	t.Helper()
	v := &backend.Volume{ID: fmt.Sprintf("x-%032d", n)}
	path := s.Path("vols", v.ID+".json")
	if err := s.AddRecord(path, v); err != nil {
		t.Fatal(err)
	}
	return v, path
}

func readVolume(t *testing.T, path string) *backend.Volume {
	t.Helper()
	var v backend.Volume
	if err := ReadJSON(path, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func wantCount(t *testing.T, s *Store, node string, want int64) {
	t.Helper()
	if n, err := s.NodeAttachments("vols", node, valid); err != nil || n != want {
		t.Fatalf("NodeAttachments(%s) = %d, %v; want %d", node, n, err, want)
	}
}

// markers lists the volume ids the index holds for a node.
func markers(t *testing.T, s *Store, node string) []string {
	t.Helper()
	entries, err := os.ReadDir(s.Path(AttachmentsDir, node))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids
}

func TestAttachmentIndex(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openIndexed(t, root)
	v1, p1 := addVolume(t, s, 1)
	v2, p2 := addVolume(t, s, 2)
	wantCount(t, s, "n1", 0)
	for _, step := range []struct {
		v    *backend.Volume
		path string
		a    backend.Attachment
	}{{v1, p1, backend.Attachment{NodeID: "n1"}}, {v2, p2, backend.Attachment{NodeID: "n1"}}, {v1, p1, backend.Attachment{NodeID: "n2", ReadOnly: true}}} {
		if err := s.SetAttachment(step.path, step.v, step.a); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetAttachment(p1, v1, backend.Attachment{NodeID: "../n1"}); csierr.Code(err) != codes.InvalidArgument {
		t.Fatalf("attachment to a bad node id: %v, want InvalidArgument", err)
	}
	wantCount(t, s, "n1", 2)
	wantCount(t, s, "n2", 1)
	wantCount(t, s, "n3", 0)
	wantCount(t, s, "../n1", 0)
	if got := readVolume(t, p1).Attachments; len(got) != 2 {
		t.Fatalf("record of %s lists %v", v1.ID, got)
	}

	// Another process, or a restart, counts the same.
	wantCount(t, openIndexed(t, root), "n1", 2)

	for range 2 { // the second time finds nothing to do
		if err := s.RemoveAttachment(p1, readVolume(t, p1), "n1"); err != nil {
			t.Fatal(err)
		}
	}
	wantCount(t, s, "n1", 1)
	if got := markers(t, s, "n1"); !slices.Equal(got, []string{v2.ID}) {
		t.Fatalf("markers of n1: %v, want only %s", got, v2.ID)
	}
	if err := s.RemoveAttachment(p1, readVolume(t, p1), "../n2"); err != nil {
		t.Fatalf("removing the attachment of a bad node id: %v", err)
	}
	wantCount(t, s, "n2", 1)
}

// TestAttachmentIndexCrash leaves the index and the records as a crash at
// each point of a publish and of an unpublish would, then restarts: the
// count is the records' at once, the stray marker goes, and the retry the
// CO makes (it never saw the call succeed) ends consistent.
func TestAttachmentIndexCrash(t *testing.T) {
	a := backend.Attachment{NodeID: "n1"}
	steps := []struct {
		name  string
		crash func(t *testing.T, s *Store, v *backend.Volume, path string) // leaves the state
		retry func(s *Store, v *backend.Volume, path string) error
		want  int64 // attachments after the retry
	}{
		{"publish: nothing written yet", func(*testing.T, *Store, *backend.Volume, string) {}, func(s *Store, v *backend.Volume, path string) error { return s.SetAttachment(path, v, a) }, 1},
		{"publish: marker made, record not written", func(t *testing.T, s *Store, v *backend.Volume, _ string) {
			if err := os.MkdirAll(s.Path(AttachmentsDir, "n1"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.Path(AttachmentsDir, "n1", v.ID), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store, v *backend.Volume, path string) error { return s.SetAttachment(path, v, a) }, 1},
		{"unpublish: record written, marker left", func(t *testing.T, s *Store, v *backend.Volume, path string) {
			if err := s.SetAttachment(path, v, a); err != nil {
				t.Fatal(err)
			}
			v.RemoveAttachment("n1")
			if err := WriteJSON(path, v, fsutil.Durable); err != nil {
				t.Fatal(err)
			}
		}, func(s *Store, v *backend.Volume, path string) error { return s.RemoveAttachment(path, v, "n1") }, 0},
		{"delete after an unpublish that left its marker", func(t *testing.T, s *Store, v *backend.Volume, path string) {
			if err := s.SetAttachment(path, v, a); err != nil {
				t.Fatal(err)
			}
			v.RemoveAttachment("n1")
			if err := WriteJSON(path, v, fsutil.Durable); err != nil {
				t.Fatal(err)
			}
			if err := RemoveFiles(path); err != nil {
				t.Fatal(err)
			}
		}, nil, 0},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "data")
			s := openIndexed(t, root)
			other, otherPath := addVolume(t, s, 9) // stays published throughout
			if err := s.SetAttachment(otherPath, other, a); err != nil {
				t.Fatal(err)
			}
			v, path := addVolume(t, s, 1)
			step.crash(t, s, v, path)

			s = openIndexed(t, root) // restart
			wantCount(t, s, "n1", 1)
			if got := markers(t, s, "n1"); !slices.Equal(got, []string{other.ID}) {
				t.Fatalf("markers after counting: %v, want only %s", got, other.ID)
			}
			if step.retry == nil {
				return
			}
			if err := step.retry(s, readVolume(t, path), path); err != nil {
				t.Fatal(err)
			}
			wantCount(t, s, "n1", 1+step.want)
			if n := len(markers(t, s, "n1")); n != int(1+step.want) {
				t.Fatalf("%d markers after the retry, want %d", n, 1+step.want)
			}
		})
	}
}

// A data directory from before the index gets one built from its records
// at the first start; a build a crash interrupted is done again, and its
// remains are removed.
func TestIndexAttachmentsBuildsFromRecords(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s, err := Open(root, "vols")
	if err != nil {
		t.Fatal(err)
	}
	for i, nodes := range [][]string{{"n1"}, {"n1", "n2"}, nil, {"n2"}} {
		v := &backend.Volume{ID: fmt.Sprintf("x-%032d", i)}
		for _, n := range nodes {
			v.SetAttachment(backend.Attachment{NodeID: n})
		}
		if err := s.AddRecord(s.Path("vols", v.ID+".json"), v); err != nil {
			t.Fatal(err)
		}
	}
	// The remains of a build that crashed, with a marker of its own.
	crashed := s.Path(".attachments.new-123")
	if err := os.MkdirAll(filepath.Join(crashed, "n3"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(crashed, "n3", fmt.Sprintf("x-%032d", 2)), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	s = openIndexed(t, root)
	for node, want := range map[string]int64{"n1": 2, "n2": 2, "n3": 0} {
		wantCount(t, s, node, want)
	}
	if len(markers(t, s, "n1")) != 2 || len(markers(t, s, "n2")) != 2 {
		t.Fatalf("markers: n1 %v, n2 %v", markers(t, s, "n1"), markers(t, s, "n2"))
	}
	s = openIndexed(t, root) // the index exists now: the remains go
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Fatalf("remains of a crashed build: %v", err)
	}
	// A node id that cannot name a directory is left out, not indexed
	// somewhere else.
	bad := filepath.Join(t.TempDir(), "bad")
	bs, err := Open(bad, "vols")
	if err != nil {
		t.Fatal(err)
	}
	v := &backend.Volume{ID: fmt.Sprintf("x-%032d", 1), Attachments: []backend.Attachment{{NodeID: "../n1"}, {NodeID: "n1"}}}
	if err := bs.AddRecord(bs.Path("vols", v.ID+".json"), v); err != nil {
		t.Fatal(err)
	}
	if err := bs.IndexAttachments("vols", valid); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(bs.Path(AttachmentsDir))
	if err != nil || len(entries) != 1 || entries[0].Name() != "n1" {
		t.Fatalf("index of a record published to ../n1 and n1: %v, %v", entries, err)
	}
	if _, err := os.Stat(filepath.Join(bad, "n1")); !os.IsNotExist(err) {
		t.Fatalf("../n1 indexed beside the index: %v", err)
	}
}

// ReadPage reads the page and one record more, not the whole directory.
func TestReadPage(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "data"), "things")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 25 {
		id := fmt.Sprintf("x-%032d", i)
		ids = append(ids, id)
		if err := s.AddRecord(s.Path("things", id+".json"), rec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Neither a foreign record nor another kind of file is listed.
	for _, f := range []string{"foreign.json", ids[3] + ".img"} {
		if err := os.WriteFile(s.Path("things", f), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reads := 0
	read := func(id string) (*rec, error) {
		reads++
		var r rec
		return &r, ReadJSON(s.Path("things", id+".json"), &r)
	}
	var got []string
	after, pages := "", 0
	for {
		reads = 0
		page, more, err := ReadPage(s, "things", valid, read, after, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if reads > 11 {
			t.Errorf("page %d read %d records for 10", pages, reads)
		}
		for _, r := range page {
			got = append(got, r.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, ids) || pages != 3 {
		t.Fatalf("got %v in %d pages, want %v in 3", got, pages, ids)
	}

	// After an id that is gone, and with a filter: the page starts at its
	// place and holds what the filter keeps.
	even := func(r *rec) bool { return r.ID[len(r.ID)-1]%2 == 0 }
	page, more, err := ReadPage(s, "things", valid, read, "x-00000000000000000000000000000009z", 3, even)
	if err != nil || !more || len(page) != 3 || page[0].ID != ids[10] || page[2].ID != ids[14] {
		t.Fatalf("filtered page after a gone id: %v, more %t, %v", page, more, err)
	}
	page, more, err = ReadPage(s, "things", valid, read, ids[20], 0, even)
	if err != nil || more || len(page) != 2 || page[1].ID != ids[24] {
		t.Fatalf("last filtered page without a limit: %v, more %t, %v", page, more, err)
	}
}

// The listing of a directory that has settled is kept, and given up as soon
// as an entry of the directory changes.
func TestListingKeptWhileUnchanged(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "data"), "things")
	if err != nil {
		t.Fatal(err)
	}
	add := func(i int) {
		id := fmt.Sprintf("x-%032d", i)
		if err := s.AddRecord(s.Path("things", id+".json"), rec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	settle := func() { // as if the last change were long ago
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(s.Path("things"), old, old); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() []string {
		got, err := s.ListIDs("things", valid)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	add(1)
	add(2)
	if got := ids(); len(got) != 2 || s.listings["things"] != nil {
		t.Fatalf("ids %v, kept %v: a directory just changed must not be kept", got, s.listings["things"])
	}
	settle()
	if got := ids(); len(got) != 2 || s.listings["things"] == nil {
		t.Fatalf("ids %v, kept %v: a settled directory is kept", got, s.listings["things"])
	}
	kept := s.listings["things"]
	if got := ids(); len(got) != 2 || s.listings["things"] != kept {
		t.Fatalf("ids %v: listed again though unchanged", got)
	}
	add(3) // changes the directory: listed anew
	if got := ids(); len(got) != 3 {
		t.Fatalf("ids %v after a third record", got)
	}
	settle()
	ids()
	if err := os.Remove(s.Path("things", fmt.Sprintf("x-%032d", 1)+".json")); err != nil {
		t.Fatal(err)
	}
	if got := ids(); len(got) != 2 || got[0] != fmt.Sprintf("x-%032d", 2) {
		t.Fatalf("ids %v after a record was removed", got)
	}
}
