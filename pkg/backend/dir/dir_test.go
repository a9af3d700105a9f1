package dir

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

var testNow = time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)

func newBackend(t *testing.T, onDelete OnDelete) (*Backend, string) {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), "data")
	b, err := New(Options{DataDir: dataDir, OnDelete: onDelete, AllowLocal: true})
	if err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return testNow }
	return b, dataDir
}

func spec(name string) backend.VolumeSpec {
	return backend.VolumeSpec{Name: name, CapacityBytes: 1 << 30, AccessMode: "MULTI_NODE_MULTI_WRITER"}
}

func mustCreate(t *testing.T, b *Backend, name string) *backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), spec(name))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantCode(t *testing.T, what string, err error, want codes.Code, contains string) {
	t.Helper()
	if got := csierr.Code(err); got != want || !strings.Contains(errString(err), contains) {
		t.Errorf("%s: %v (%s), want %s containing %q", what, err, got, want, contains)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestNewChecksOptions(t *testing.T) {
	for _, o := range []Options{{DataDir: ""}, {DataDir: "data"}, {DataDir: "/tmp/x", OnDelete: "shred"}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	b, _ := newBackend(t, "")
	if b.onDelete != Retain {
		t.Errorf("default on delete %q, want retain", b.onDelete)
	}
	if info := b.Info(); !info.SharedFilesystem || info.Name != "dir" || info.Topology[filestore.TopologyKey] != b.store.ID {
		t.Errorf("Info: %+v", info)
	}
}

func TestCreateIsIdempotentByName(t *testing.T) {
	b, _ := newBackend(t, Retain)
	v := mustCreate(t, b, "uploads")
	again := mustCreate(t, b, "uploads")
	if again.ID != v.ID || !ValidVolumeID(v.ID) {
		t.Fatalf("ids %q then %q", v.ID, again.ID)
	}
	if fi, err := os.Stat(b.volumeTree(v.ID)); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Fatalf("volume directory: %v %v", fi, err)
	}
	other := mustCreate(t, b, "../../etc/passwd")
	if other.ID == v.ID || !ValidVolumeID(other.ID) || !exists(b.volumeTree(other.ID)) {
		t.Fatalf("a name with slashes: %+v", other)
	}
	vols, err := b.ListVolumes(context.Background())
	if err != nil || len(vols) != 2 {
		t.Fatalf("ListVolumes: %d volumes, %v", len(vols), err)
	}
}

func TestCreateRefusesWhatADirectoryIsNot(t *testing.T) {
	b, dir := newBackend(t, Retain)
	for _, s := range []backend.VolumeSpec{
		{Name: "a", Block: true}, {Name: "b", FsType: "ext4"}, {Name: "c", MkfsOptions: "-m 0"},
		{Name: "d", Parameters: map[string]string{"x": "y"}}, {Name: "e", MutableParameters: map[string]string{"x": "y"}},
	} {
		_, err := b.CreateVolume(context.Background(), s)
		wantCode(t, s.Name, err, codes.InvalidArgument, "directory")
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, volumesDir)); len(entries) != 0 {
		t.Errorf("refused creations left %d entries", len(entries))
	}
}

func TestBadIDsNeverBecomePaths(t *testing.T) {
	b, dir := newBackend(t, Delete)
	victim := filepath.Join(filepath.Dir(dir), "victim")
	if err := os.Mkdir(victim, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range []string{"", "../victim", "../../victim", "vol-XYZ", "vol-" + strings.Repeat("0", 31) + "/", "snap-" + strings.Repeat("0", 32)} {
		if _, err := b.Volume(ctx, id); csierr.Code(err) != codes.NotFound {
			t.Errorf("Volume(%q): %v, want NotFound", id, err)
		}
		if err := b.DeleteVolume(ctx, id); err != nil {
			t.Errorf("DeleteVolume(%q): %v", id, err)
		}
		if err := b.DeleteSnapshot(ctx, id); err != nil {
			t.Errorf("DeleteSnapshot(%q): %v", id, err)
		}
		if err := b.Unpublish(ctx, id, "n1"); err != nil {
			t.Errorf("Unpublish(%q): %v", id, err)
		}
		if c := b.Condition(ctx, &backend.Volume{ID: id}); !c.Abnormal {
			t.Errorf("Condition(%q) normal", id)
		}
	}
	if !exists(victim) {
		t.Fatal("a bad id removed a directory outside the store")
	}
}

func TestCreateResumesAfterACrash(t *testing.T) {
	b, _ := newBackend(t, Retain)
	id, _ := filestore.NewID("vol-")
	if _, err := b.store.ClaimName(volumeName, "half", id, ValidVolumeID); err != nil {
		t.Fatal(err)
	}
	// A crash while the tree was being built left a partial one aside.
	if err := os.MkdirAll(filepath.Join(b.tmpTree(id), "partial"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Volume(context.Background(), id); csierr.Code(err) != codes.NotFound {
		t.Fatalf("a volume without record: %v, want NotFound", err)
	}
	v := mustCreate(t, b, "half")
	if v.ID != id {
		t.Fatalf("resumed under %s, claimed %s", v.ID, id)
	}
	if entries, err := os.ReadDir(b.volumeTree(id)); err != nil || len(entries) != 0 {
		t.Fatalf("resumed volume holds %v (%v), want an empty directory", entries, err)
	}
	if exists(b.tmpTree(id)) {
		t.Error("the partial tree is left")
	}

	// A crash after the rename, before the record: the tree is complete.
	id2, _ := filestore.NewID("vol-")
	b.store.ClaimName(volumeName, "renamed", id2, ValidVolumeID)
	os.MkdirAll(b.volumeTree(id2), 0o755)
	os.WriteFile(filepath.Join(b.volumeTree(id2), "f"), []byte("x"), 0o644)
	if v := mustCreate(t, b, "renamed"); v.ID != id2 || !exists(filepath.Join(b.volumeTree(id2), "f")) {
		t.Fatalf("resumed %+v", v)
	}
	// A removal that crashed half-way left part of a tree in dir/tmp.
	if err := os.MkdirAll(filepath.Join(b.tmpTree(v.ID), "half-removed"), 0o700); err != nil {
		t.Fatal(err)
	}
	b.onDelete = Delete
	if err := b.DeleteVolume(context.Background(), v.ID); err != nil || exists(b.tmpTree(v.ID)) || exists(b.volumeTree(v.ID)) {
		t.Fatalf("DeleteVolume after a crashed removal: %v", err)
	}
	// DeleteVolume of an id whose creation never finished removes its remains.
	id3, _ := filestore.NewID("vol-")
	os.MkdirAll(b.volumeTree(id3), 0o755)
	if err := b.DeleteVolume(context.Background(), id3); err != nil || exists(b.volumeTree(id3)) {
		t.Fatalf("DeleteVolume of remains: %v, left: %v", err, exists(b.volumeTree(id3)))
	}
}

func TestDeleteRetainsOrDeletes(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []OnDelete{Retain, Delete} {
		t.Run(string(mode), func(t *testing.T) {
			b, dir := newBackend(t, mode)
			v := mustCreate(t, b, "my vol/1")
			if err := os.WriteFile(filepath.Join(b.volumeTree(v.ID), "data"), []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "n1"}); err != nil {
				t.Fatal(err)
			}
			if err := b.DeleteVolume(ctx, v.ID); !errors.Is(err, csierr.ErrInUse) {
				t.Fatalf("DeleteVolume of a published volume: %v, want in use", err)
			}
			if err := b.Unpublish(ctx, v.ID, "n1"); err != nil {
				t.Fatal(err)
			}
			for range 2 { // a retry changes nothing
				if err := b.DeleteVolume(ctx, v.ID); err != nil {
					t.Fatal(err)
				}
			}
			if exists(b.volumeTree(v.ID)) || exists(b.volumeRecord(v.ID)) || exists(b.store.NameLink(volumeName, v.Name)) {
				t.Fatal("tree, record or name left in place")
			}
			retained, _ := os.ReadDir(filepath.Join(dir, retainedDir))
			tmp, _ := os.ReadDir(filepath.Join(dir, tmpDir))
			if len(tmp) != 0 {
				t.Errorf("left in dir/tmp: %v", tmp)
			}
			switch mode {
			case Retain:
				want := "my_vol_1-20260504T030201Z-" + v.ID
				if len(retained) != 1 || retained[0].Name() != want {
					t.Fatalf("retained: %v, want %s", retained, want)
				}
				if b, err := os.ReadFile(filepath.Join(dir, retainedDir, want, "data")); string(b) != "keep me" {
					t.Fatalf("retained data: %q %v", b, err)
				}
			case Delete:
				if len(retained) != 0 {
					t.Fatalf("retained: %v", retained)
				}
			}
			if again := mustCreate(t, b, "my vol/1"); again.ID == v.ID {
				t.Fatal("the name maps to the deleted volume")
			}
		})
	}
}

// breakGuard makes the data directory look like each way a shared mount
// goes missing, and checks every user of the guard refuses.
func TestGuardRefusesAMissingMount(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name, want string
		breakIt    func(b *Backend, dir string)
	}{
		{"marker gone", "carries no store marker", func(_ *Backend, dir string) { os.Remove(filepath.Join(dir, filestore.IDFile)) }},
		{"other marker", "carries store id 0123456789abcdef", func(_ *Backend, dir string) {
			os.Remove(filepath.Join(dir, filestore.IDFile))
			os.Symlink("0123456789abcdef", filepath.Join(dir, filestore.IDFile))
		}},
		{"root filesystem", "on the root filesystem", func(b *Backend, _ string) { b.rootDev = b.dev }},
		{"other filesystem", "another filesystem", func(b *Backend, _ string) { b.dev++ }},
		{"directory gone", "no such file", func(_ *Backend, dir string) { os.Rename(dir, dir+".away") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, dir := newBackend(t, Retain)
			v := mustCreate(t, b, "v")
			n := b.ForNode()
			c.breakIt(b, dir)
			_, err := b.CreateVolume(ctx, spec("w"))
			wantCode(t, "CreateVolume", err, codes.FailedPrecondition, c.want)
			wantCode(t, "DeleteVolume", b.DeleteVolume(ctx, v.ID), codes.FailedPrecondition, c.want)
			_, err = b.Publish(ctx, v, backend.Attachment{NodeID: "n1"})
			wantCode(t, "Publish", err, codes.FailedPrecondition, c.want)
			_, err = b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: v.ID})
			wantCode(t, "CreateSnapshot", err, codes.FailedPrecondition, c.want)
			_, err = b.ListVolumes(ctx)
			wantCode(t, "ListVolumes", err, codes.FailedPrecondition, c.want)
			_, err = b.ListSnapshots(ctx)
			wantCode(t, "ListSnapshots", err, codes.FailedPrecondition, c.want)
			wantCode(t, "Mount", n.Mount(ctx, v, t.TempDir(), false), codes.FailedPrecondition, c.want)
			wantCode(t, "Check", n.Check(ctx, v.ID), codes.FailedPrecondition, dir)
			wantCode(t, "Health", n.Health(ctx), codes.FailedPrecondition, dir)
			if cond := b.Condition(ctx, v); !cond.Abnormal || !strings.Contains(cond.Message, c.want) {
				t.Errorf("Condition: %+v", cond)
			}
			// Where the node finds no record, that is the missing mount,
			// not a missing volume.
			os.RemoveAll(filepath.Join(dir, volumesDir))
			_, err = n.Volume(ctx, v.ID)
			wantCode(t, "Volume", err, codes.FailedPrecondition, c.want)
		})
	}
}

func TestConditionOfAVanishedDirectory(t *testing.T) {
	b, _ := newBackend(t, Retain)
	v := mustCreate(t, b, "v")
	if c := b.Condition(context.Background(), v); c.Abnormal {
		t.Fatalf("fresh volume abnormal: %+v", c)
	}
	os.Remove(b.volumeTree(v.ID))
	if c := b.Condition(context.Background(), v); !c.Abnormal || !strings.Contains(c.Message, v.ID) {
		t.Fatalf("volume without directory: %+v", c)
	}
	wantCode(t, "Check", b.ForNode().Check(context.Background(), v.ID), codes.FailedPrecondition, v.ID)
}

// fillTree writes a small tree with each kind of entry copyTree copies.
func fillTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub", "deeper"), 0o750))
	must(os.WriteFile(filepath.Join(root, "sub", "deeper", "file"), []byte("deep content"), 0o640))
	must(os.WriteFile(filepath.Join(root, "big"), make([]byte, 3<<20), 0o600))
	must(os.Symlink("sub/deeper/file", filepath.Join(root, "link")))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o620))
	must(os.Chmod(filepath.Join(root, "sub"), 0o711))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(root, "sub", "deeper", "file"), old, old))
	must(os.Chtimes(filepath.Join(root, "sub"), old, old))
}

// sameTree compares two trees: names, kinds, modes, sizes, contents of
// small files, link targets and modification times.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	describe := func(root string) map[string]string {
		out := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			fi, _ := d.Info()
			desc := fi.Mode().String() + " " + fi.ModTime().UTC().String()
			switch {
			case fi.Mode().IsRegular():
				c, _ := os.ReadFile(p)
				desc += " " + string(c[:min(len(c), 32)]) + " " + time.Duration(fi.Size()).String()
			case fi.Mode()&fs.ModeSymlink != 0:
				l, _ := os.Readlink(p)
				desc += " -> " + l
			}
			if rel == "." {
				desc = "root" // the copy's own directory is dated anew
			}
			out[rel] = desc
			return nil
		})
		return out
	}
	da, db := describe(a), describe(b)
	if len(da) != len(db) {
		t.Fatalf("trees differ: %v\n%v", da, db)
	}
	for k, v := range da {
		if db[k] != v {
			t.Errorf("%s: %q, copy %q", k, v, db[k])
		}
	}
}

func TestSnapshotsAndClonesAreCopies(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t, Delete)
	src := mustCreate(t, b, "src")
	fillTree(t, b.volumeTree(src.ID))

	snap, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: src.ID}); err != nil || again.ID != snap.ID {
		t.Fatalf("CreateSnapshot again: %+v %v", again, err)
	}
	if want := int64(3<<20 + len("deep content")); snap.SizeBytes != want {
		t.Errorf("snapshot size %d, want %d", snap.SizeBytes, want)
	}
	sameTree(t, b.volumeTree(src.ID), b.snapshotTree(snap.ID))
	// The source changes; the snapshot does not.
	os.WriteFile(filepath.Join(b.volumeTree(src.ID), "sub", "deeper", "file"), []byte("changed"), 0o640)

	s := spec("from-snap")
	s.Source = &backend.Source{SnapshotID: snap.ID}
	fromSnap, err := b.CreateVolumeFrom(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, b.snapshotTree(snap.ID), b.volumeTree(fromSnap.ID))

	s = spec("clone")
	s.Source = &backend.Source{VolumeID: src.ID}
	clone, err := b.CreateVolumeFrom(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, b.volumeTree(src.ID), b.volumeTree(clone.ID))
	if c, _ := os.ReadFile(filepath.Join(b.volumeTree(clone.ID), "sub", "deeper", "file")); string(c) != "changed" {
		t.Errorf("clone reads %q", c)
	}

	s = spec("from-nothing")
	s.Source = &backend.Source{SnapshotID: "snap-" + strings.Repeat("a", 32)}
	if _, err := b.CreateVolumeFrom(ctx, s); csierr.Code(err) != codes.NotFound {
		t.Errorf("from a missing snapshot: %v", err)
	}
	if id, _ := b.store.LookupName(volumeName, "from-nothing", ValidVolumeID); id != "" {
		t.Error("a missing source left its name claimed")
	}

	snaps, err := b.ListSnapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("ListSnapshots: %v %v", snaps, err)
	}
	for range 2 {
		if err := b.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
	}
	if exists(b.snapshotTree(snap.ID)) || exists(b.snapshotRecord(snap.ID)) {
		t.Error("snapshot left after DeleteSnapshot")
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(tmp) != 0 {
		t.Errorf("left in dir/tmp: %v", tmp)
	}
}

func TestCopyStopsWhenCancelled(t *testing.T) {
	b, dir := newBackend(t, Delete)
	src := mustCreate(t, b, "src")
	fillTree(t, b.volumeTree(src.ID))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: src.ID})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateSnapshot with an ended context: %v", err)
	}
	snaps, _ := b.ListSnapshots(context.Background())
	tmp, _ := os.ReadDir(filepath.Join(dir, tmpDir))
	trees, _ := os.ReadDir(filepath.Join(dir, snapshotsDir))
	if len(snaps) != 0 || len(tmp) != 0 || len(trees) != 0 {
		t.Fatalf("a cancelled copy left snapshots %v, dir/tmp %v, trees %v", snaps, tmp, trees)
	}
	snap, err := b.CreateSnapshot(context.Background(), backend.SnapshotSpec{Name: "s", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, b.volumeTree(src.ID), b.snapshotTree(snap.ID))
}

func TestNodeMountsTheDirectory(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	b, _ := newBackend(t, Retain)
	n := b.ForNode()
	v := mustCreate(t, b, "v")
	os.WriteFile(filepath.Join(b.volumeTree(v.ID), "hello"), []byte("hi"), 0o644)
	for _, readOnly := range []bool{false, true} {
		staging := filepath.Join(t.TempDir(), "staging")
		os.Mkdir(staging, 0o750)
		t.Cleanup(func() { unix.Unmount(staging, unix.MNT_DETACH) })
		for range 2 { // the second is a no-op
			if err := n.Mount(ctx, v, staging, readOnly); err != nil {
				t.Fatal(err)
			}
		}
		if c, err := os.ReadFile(filepath.Join(staging, "hello")); string(c) != "hi" {
			t.Fatalf("read through the mount: %q %v", c, err)
		}
		err := os.WriteFile(filepath.Join(staging, "w"), nil, 0o644)
		if readOnly != errors.Is(err, unix.EROFS) {
			t.Fatalf("read-only %v: write: %v", readOnly, err)
		}
		for range 2 {
			if err := n.Unmount(ctx, v.ID, staging); err != nil {
				t.Fatal(err)
			}
		}
		if exists(filepath.Join(staging, "hello")) {
			t.Fatal("still mounted after Unmount")
		}
	}
	if err := n.Unmount(ctx, v.ID, filepath.Join(t.TempDir(), "never")); err != nil {
		t.Errorf("Unmount of a path that does not exist: %v", err)
	}
	if _, err := n.Attach(ctx, v, nil); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("Attach: %v", err)
	}
	// A volume directory that is a mount of its own is not on the shared
	// filesystem.
	if err := unix.Mount("tmpfs", b.volumeTree(v.ID), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(b.volumeTree(v.ID), unix.MNT_DETACH)
	wantCode(t, "Mount of a volume directory on another filesystem", n.Mount(ctx, v, t.TempDir(), false), codes.FailedPrecondition, "another filesystem")
}

// A container writing the source volume during a copy can swap an entry the
// copy has listed for a symbolic link: the copy must not follow it out of
// the source, nor hang on a FIFO.
func TestCopyFollowsNoSwappedLinkOutOfTheSource(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, swap := range []struct {
		name string
		make func(path string) error
	}{
		{"file to a link", func(p string) error { return os.Symlink(outside, p) }},
		{"directory to a link", func(p string) error { return os.Symlink(filepath.Dir(outside), filepath.Dir(p)) }},
		{"file to a FIFO", func(p string) error { return unix.Mkfifo(p, 0o600) }},
	} {
		t.Run(swap.name, func(t *testing.T) {
			b, _ := newBackend(t, Delete)
			src := mustCreate(t, b, "src")
			victim := filepath.Join(b.volumeTree(src.ID), "sub", "secret")
			if err := os.MkdirAll(filepath.Dir(victim), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(victim, []byte("public"), 0o644); err != nil {
				t.Fatal(err)
			}
			testHookCopyFile = func(rel string) {
				if rel != "sub/secret" {
					return
				}
				if strings.Contains(swap.name, "directory") {
					if err := os.RemoveAll(filepath.Dir(victim)); err != nil {
						t.Error(err)
					}
				} else if err := os.Remove(victim); err != nil {
					t.Error(err)
				}
				if err := swap.make(victim); err != nil {
					t.Error(err)
				}
			}
			defer func() { testHookCopyFile = nil }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			snap, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: src.ID})
			if err == nil {
				if c, _ := os.ReadFile(filepath.Join(b.snapshotTree(snap.ID), "sub", "secret")); string(c) == "secret" {
					t.Fatal("the copy followed a link out of the source volume")
				}
			}
		})
	}
}

// endsAfter is a context whose Err reports DeadlineExceeded from its n-th
// call on, as a call's time running out does.
type endsAfter struct {
	context.Context
	calls, n int
}

func (c *endsAfter) Err() error {
	c.calls++
	if c.calls >= c.n {
		return context.DeadlineExceeded
	}
	return nil
}

// A copy that its call's time cuts short keeps what it copied, and the next
// call goes on from there rather than copying again: under Swarm, whose
// calls have about 15 s each, a large tree is copied over the retries.
func TestCopyResumesWhereItStopped(t *testing.T) {
	b, dir := newBackend(t, Delete)
	src := mustCreate(t, b, "src")
	srcTree := b.volumeTree(src.ID)
	fillTree(t, srcTree)
	// The walk visits "big" first (sorted names); the time runs out after it.
	short := &endsAfter{Context: context.Background(), n: 4}
	if _, err := b.CreateSnapshot(short, backend.SnapshotSpec{Name: "s", SourceVolumeID: src.ID}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CreateSnapshot whose time ran out: %v, want DeadlineExceeded", err)
	}
	tmp, err := os.ReadDir(filepath.Join(dir, tmpDir))
	if err != nil || len(tmp) != 1 {
		t.Fatalf("dir/tmp holds %v (%v), want the partial copy", tmp, err)
	}
	partial := filepath.Join(dir, tmpDir, tmp[0].Name())
	first, err := os.Stat(filepath.Join(partial, "big"))
	if err != nil {
		t.Fatalf("the first call copied nothing: %v", err)
	}
	snap, err := b.CreateSnapshot(context.Background(), backend.SnapshotSpec{Name: "s", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, srcTree, b.snapshotTree(snap.ID))
	again, err := os.Stat(filepath.Join(b.snapshotTree(snap.ID), "big"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(first, again) {
		t.Fatal("the file the first call copied whole was copied again")
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(tmp) != 0 {
		t.Fatalf("dir/tmp still holds %v", tmp)
	}
}

// A file an earlier copy left half done (its time not yet the source's) is
// copied again, whole.
func TestCopyRedoesAHalfCopiedFile(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	fillTree(t, src)
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "big"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := copyTree(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
}
