package dir

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
)

func rootOf(t *testing.T, path string) backend.RootDir {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return backend.RootDir{UID: st.Uid, GID: st.Gid, Mode: st.Mode & 0o7777}
}

// A volume's directory gets its uid, gid and mode when it is made, also
// when a crash interrupted the first attempt; copies keep their source's.
func TestCreateGivesTheDirectoryItsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Require(t, "needs root to change owners")
	}
	ctx := context.Background()
	b, _ := newBackend(t, Delete)
	want := backend.RootDir{UID: 1000, GID: 1001, Mode: 0o2750}
	s := spec("owned")
	s.Root = &want
	v, err := b.CreateVolume(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := rootOf(t, b.volumeTree(v.ID)); got != want {
		t.Fatalf("directory %+v, want %+v", got, want)
	}
	if r, err := b.Volume(ctx, v.ID); err != nil || r.Root == nil || *r.Root != want {
		t.Fatalf("record %+v, %v", r, err)
	}
	// The user changes it; a retried CreateVolume leaves that alone.
	if err := os.Chown(b.volumeTree(v.ID), 2000, 2000); err != nil {
		t.Fatal(err)
	}
	if again, err := b.CreateVolume(ctx, s); err != nil || again.ID != v.ID || rootOf(t, b.volumeTree(v.ID)).UID != 2000 {
		t.Fatalf("retry: %+v, %v", again, err)
	}

	// A crash while the directory was being made left it aside, as
	// Mkdir made it.
	id, _ := filestore.NewID("vol-")
	if _, err := b.store.ClaimName(volumeName, "crashed", id, ValidVolumeID); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(b.tmpTree(id), 0o755); err != nil {
		t.Fatal(err)
	}
	s = spec("crashed")
	s.Root = &want
	if v, err := b.CreateVolume(ctx, s); err != nil || v.ID != id {
		t.Fatalf("resumed: %+v, %v", v, err)
	}
	if got := rootOf(t, b.volumeTree(id)); got != want {
		t.Fatalf("resumed directory %+v, want %+v", got, want)
	}

	// Without the parameters: root's, 0755.
	plain := mustCreate(t, b, "plain")
	if got := rootOf(t, b.volumeTree(plain.ID)); got != backend.FreshRoot {
		t.Fatalf("plain directory %+v", got)
	}

	// A clone keeps its source's owner and mode, and its files'.
	if err := os.WriteFile(filepath.Join(b.volumeTree(id), "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(b.volumeTree(id), "f"), 1000, 1001); err != nil {
		t.Fatal(err)
	}
	s = spec("clone")
	s.Source = &backend.Source{VolumeID: id}
	clone, err := b.CreateVolumeFrom(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := rootOf(t, b.volumeTree(clone.ID)); got != want || clone.Root != nil {
		t.Fatalf("clone's directory %+v (record %+v), want %+v", got, clone.Root, want)
	}
	if got := rootOf(t, filepath.Join(b.volumeTree(clone.ID), "f")); got.UID != 1000 || got.GID != 1001 {
		t.Fatalf("clone's file %+v", got)
	}
}
