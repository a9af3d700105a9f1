package filestore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

type rec struct{ ID string }

func valid(id string) bool { return len(id) == len("x-")+32 && id[:2] == "x-" }

func TestOpenMarksTheDirectoryOnce(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	if _, err := ReadID(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadID of a directory without a marker: %v", err)
	}
	s, err := Open(root, "things")
	if err != nil {
		t.Fatal(err)
	}
	again, err := Open(root)
	if err != nil || again.ID != s.ID {
		t.Fatalf("reopened with id %q (%v), first %q", again.ID, err, s.ID)
	}
	if id, err := ReadID(root); err != nil || id != s.ID {
		t.Fatalf("ReadID: %q %v", id, err)
	}
	for _, d := range []string{NamesDir, NodesDir, "things"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	if _, err := Open("relative"); err == nil {
		t.Error("Open of a relative path succeeded")
	}
}

func TestClaimingANameConcurrently(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "data"), "things")
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], _ = s.ClaimNew("thing-", "same name", "", "x-", valid)
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || !valid(id) {
			t.Fatalf("concurrent claims got %v", ids)
		}
	}
	read := func(id string) (*rec, error) {
		var r rec
		return &r, ReadJSON(s.Path("things", id+".json"), &r)
	}
	// Claimed, no record yet: Find gives the id to resume under.
	id, r, err := Find(s, "thing-", "same name", valid, read)
	if err != nil || id != ids[0] || r != nil {
		t.Fatalf("Find before the record: %q %v %v", id, r, err)
	}
	if err := s.AddRecord(s.Path("things", id+".json"), rec{ID: id}); err != nil {
		t.Fatal(err)
	}
	if _, r, err = Find(s, "thing-", "same name", valid, read); err != nil || r == nil || r.ID != id {
		t.Fatalf("Find after the record: %v %v", r, err)
	}
	all, err := ReadAll(s, "things", valid, read)
	if err != nil || len(all) != 1 {
		t.Fatalf("ReadAll: %v %v", all, err)
	}
	if err := s.ReleaseName("thing-", "same name", "x-other"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LookupName("thing-", "same name", valid); got != id {
		t.Fatal("ReleaseName with another id released the name")
	}
	if err := s.ReleaseName("thing-", "same name", id); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LookupName("thing-", "same name", valid); got != "" {
		t.Fatalf("name still maps to %q", got)
	}
	var r2 rec
	if err := ReadJSON(s.Path("things", "x-missing.json"), &r2); csierr.Code(err) != codes.NotFound {
		t.Errorf("ReadJSON of a missing record: %v", err)
	}
}

func TestNodeRegistration(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Register("../etc"); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("Register of a bad id: %v", err)
	}
	if known, err := s.NodeKnown("n1"); known || err != nil {
		t.Fatalf("unregistered node known: %v %v", known, err)
	}
	if err := s.Register("n1"); err != nil {
		t.Fatal(err)
	}
	if known, err := s.NodeKnown("n1"); !known || err != nil {
		t.Fatalf("registered node unknown: %v %v", known, err)
	}
	if known, _ := s.NodeKnown("../data"); known {
		t.Error("a bad id is known")
	}
}
