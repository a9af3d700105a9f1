package loop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newBackend opens a backend on a fresh data directory, which it returns
// with the directory's parent (the only other thing in that parent).
func newBackend(t *testing.T) (b *Backend, dataDir string) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "data")
	b, err := New(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return testNow }
	return b, dataDir
}

func reopen(t *testing.T, dataDir string) *Backend {
	t.Helper()
	b, err := New(dataDir)
	if err != nil {
		t.Fatalf("reopening %s: %v", dataDir, err)
	}
	return b
}

func volSpec(name string, size int64) backend.VolumeSpec {
	return backend.VolumeSpec{Name: name, CapacityBytes: size, FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER"}
}

func mustCreate(t *testing.T, b *Backend, spec backend.VolumeSpec) *backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), spec)
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", spec.Name, err)
	}
	return v
}

// allocated returns the bytes a file has on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// tree describes every entry under root: its type, size and link target.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i%251)
	}
	return b
}

func isNotFound(err error) bool { return errors.Is(err, csierr.ErrNotFound) }

func TestNewRejectsRelativeDataDir(t *testing.T) {
	for _, dir := range []string{"", "data", "./data", "../data"} {
		if _, err := New(dir); err == nil {
			t.Errorf("New(%q) succeeded; a data directory must be absolute", dir)
		}
	}
}

func TestStoreIDStable(t *testing.T) {
	b, dir := newBackend(t)
	id := b.Topology()[TopologyKey]
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("store id %q", id)
	}
	if again := reopen(t, dir).Topology()[TopologyKey]; again != id {
		t.Fatalf("store id changed on reopen: %q, then %q", id, again)
	}
	if got := b.Info().Topology[TopologyKey]; got != id {
		t.Fatalf("Info topology %q, want %q", got, id)
	}
	other, _ := newBackend(t)
	if other.Topology()[TopologyKey] == id {
		t.Fatal("two data directories share a store id")
	}
	// A store-id that is not ours is refused, not silently replaced.
	link := filepath.Join(dir, "store-id")
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../etc", link); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir); err == nil {
		t.Fatal("New accepted a corrupt store-id")
	}
}

func TestInfo(t *testing.T) {
	b, _ := newBackend(t)
	info := b.Info()
	if info.Name != "loop" || info.DefaultSize != backend.GiB || info.Granularity != backend.MiB || info.MinSize != MinSize ||
		!slices.Equal(b.MutableParameters(), []string{ParamDirectIO}) || len(info.Parameters) != 0 {
		t.Fatalf("Info = %+v", info)
	}
}

// TestForeignIDs checks that ids this backend did not issue are NotFound
// (or a no-op for deletes) and never become paths: "../../victim" would
// reach the decoy record and image beside the data directory.
func TestForeignIDs(t *testing.T) {
	ctx := context.Background()
	b, dataDir := newBackend(t)
	parent := filepath.Dir(dataDir)
	decoy, err := json.Marshal(backend.Volume{ID: "../../victim", VolumeSpec: volSpec("victim", backend.MiB)})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"victim.json", "victim.img", "etc.json", "etc.img"} {
		if err := os.WriteFile(filepath.Join(parent, name), decoy, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	validVol := "vol-" + strings.Repeat("ab", 16)
	validSnap := "snap-" + strings.Repeat("ab", 16)
	foreign := []string{
		"", "../etc", "../../victim", "../../etc", "/etc/passwd", "vol-XYZ",
		"vol-" + strings.Repeat("AB", 16), // upper case hex
		"vol-" + strings.Repeat("a", 31),
		"vol-" + strings.Repeat("a", 33),
		validVol + "\n",
		validVol + "/../../../victim",
		" " + validVol,
	}
	before := tree(t, parent)

	check := func(what string, err error, wantNotFound bool) {
		t.Helper()
		if wantNotFound && !isNotFound(err) {
			t.Errorf("%s: got %v, want NotFound", what, err)
		}
		if !wantNotFound && err != nil {
			t.Errorf("%s: got %v, want success", what, err)
		}
	}
	for _, id := range append(slices.Clone(foreign), validSnap) {
		_, err := b.Volume(ctx, id)
		check("Volume("+id+")", err, true)
		check("DeleteVolume("+id+")", b.DeleteVolume(ctx, id), false)
		_, err = b.Publish(ctx, &backend.Volume{ID: id}, backend.Attachment{NodeID: "node-1"})
		check("Publish("+id+")", err, true)
		check("Unpublish("+id+")", b.Unpublish(ctx, id, "node-1"), false)
		_, err = b.ExpandVolume(ctx, id, backend.GiB)
		check("ExpandVolume("+id+")", err, true)
		check("ModifyVolume("+id+")", b.ModifyVolume(ctx, id, map[string]string{ParamDirectIO: "false"}), true)
		_, err = b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s " + id, SourceVolumeID: id})
		check("CreateSnapshot(source "+id+")", err, true)

		n := b.ForNode("node-1")
		if dev, err := n.Device(ctx, id); dev != "" || err != nil {
			t.Errorf("Device(%q) = %q, %v", id, dev, err)
		}
		check("Detach("+id+")", n.Detach(ctx, id), false)
	}
	for _, id := range append(slices.Clone(foreign), validVol) {
		_, err := b.Snapshot(ctx, id)
		check("Snapshot("+id+")", err, true)
		check("DeleteSnapshot("+id+")", b.DeleteSnapshot(ctx, id), false)
	}
	for _, node := range []string{"", "..", "../x", "a/b", ".hidden", "-x", strings.Repeat("n", 129)} {
		if known, err := b.NodeKnown(ctx, node); known || err != nil {
			t.Errorf("NodeKnown(%q) = %t, %v", node, known, err)
		}
		if err := b.Register(ctx, node); !errors.Is(err, csierr.ErrInvalid) {
			t.Errorf("Register(%q) = %v, want InvalidArgument", node, err)
		}
	}
	if after := tree(t, parent); !maps.Equal(before, after) {
		t.Fatalf("foreign ids changed the filesystem:\nbefore %v\nafter  %v", before, after)
	}

	// A copy of a foreign source fails too, and leaves neither image nor
	// record (only, at most, the claimed name: see the report).
	for i, src := range []backend.Source{{VolumeID: "../../victim"}, {SnapshotID: "../../victim"}, {VolumeID: validSnap}} {
		spec := volSpec("copy", 16*backend.MiB)
		spec.Source = &src
		if _, err := b.CreateVolume(ctx, spec); !isNotFound(err) {
			t.Errorf("CreateVolume from %+v (#%d): %v, want NotFound", src, i, err)
		}
	}
	after := tree(t, parent)
	for p, desc := range after {
		if !strings.HasPrefix(p, "data") {
			if before[p] != desc {
				t.Errorf("%s outside the data directory changed", p)
			}
		} else if strings.HasPrefix(p, filepath.Join("data", volumesDir)+"/") || strings.HasPrefix(p, filepath.Join("data", snapshotsDir)+"/") {
			t.Errorf("a failed copy left %s", p)
		}
	}
}

func TestCreateVolume(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	spec := volSpec("db", 64*backend.MiB)
	spec.MkfsOptions = "-m 0"
	spec.MutableParameters = map[string]string{ParamDirectIO: "false"}
	v := mustCreate(t, b, spec)
	if !ValidVolumeID(v.ID) {
		t.Fatalf("id %q is not a volume id", v.ID)
	}
	if v.Name != "db" || v.CapacityBytes != 64*backend.MiB || v.MkfsOptions != "-m 0" || !v.CreatedAt.Equal(testNow) || len(v.Attachments) != 0 {
		t.Fatalf("volume %+v", v)
	}
	img := filepath.Join(dir, volumesDir, v.ID+".img")
	if got := fileSize(t, img); got != 64*backend.MiB {
		t.Fatalf("image is %d bytes, want %d", got, 64*backend.MiB)
	}
	if a := allocated(t, img); a > 64*1024 {
		t.Fatalf("image has %d bytes allocated: it must be sparse", a)
	}
	stored, err := reopen(t, dir).Volume(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.ID != v.ID || stored.CapacityBytes != v.CapacityBytes || stored.FsType != "ext4" ||
		stored.MutableParameters[ParamDirectIO] != "false" || !stored.CreatedAt.Equal(testNow) {
		t.Fatalf("stored %+v, want %+v", stored, v)
	}

	// Idempotent by name: the existing volume comes back unchanged, even
	// for other arguments (the controller compares them).
	again, err := b.CreateVolume(ctx, volSpec("db", 128*backend.MiB))
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != v.ID || again.CapacityBytes != 64*backend.MiB {
		t.Fatalf("retry returned %+v, want the existing volume", again)
	}
	if got := fileSize(t, img); got != 64*backend.MiB {
		t.Fatalf("a retry resized the image to %d", got)
	}
	other := mustCreate(t, b, volSpec("other", 16*backend.MiB))
	if other.ID == v.ID {
		t.Fatal("two names share an id")
	}
	vols, err := b.ListVolumes(ctx)
	if err != nil || len(vols) != 2 {
		t.Fatalf("ListVolumes = %v, %v", vols, err)
	}
}

func TestCreateVolumeInvalid(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*backend.VolumeSpec)
	}{
		{"backend parameters", func(s *backend.VolumeSpec) { s.Parameters = map[string]string{"pool": "x"} }},
		{"unknown mutable parameter", func(s *backend.VolumeSpec) { s.MutableParameters = map[string]string{"iops": "1"} }},
		{"bad directIO", func(s *backend.VolumeSpec) { s.MutableParameters = map[string]string{ParamDirectIO: "yes"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, dir := newBackend(t)
			spec := volSpec("v", 16*backend.MiB)
			tt.mod(&spec)
			if _, err := b.CreateVolume(context.Background(), spec); !errors.Is(err, csierr.ErrInvalid) {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			for _, d := range []string{volumesDir, filestore.NamesDir} {
				if entries, _ := os.ReadDir(filepath.Join(dir, d)); len(entries) != 0 {
					t.Errorf("refused request left %v in %s", entries, d)
				}
			}
		})
	}
}

// TestCreateVolumeResume simulates a controller that crashed during
// CreateVolume at each step; the retry completes under the claimed id.
func TestCreateVolumeResume(t *testing.T) {
	steps := []struct {
		name  string
		crash func(t *testing.T, b *Backend, id string)
	}{
		{"after the name was claimed", func(*testing.T, *Backend, string) {}},
		{"while building the image", func(t *testing.T, b *Backend, id string) {
			if err := os.WriteFile(b.store.volumeImage(id)+".tmp", pattern(4096, 1), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"after the image was built", func(t *testing.T, b *Backend, id string) {
			if err := buildImage(context.Background(), b.store.volumeImage(id), "", 8*backend.MiB); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			ctx := context.Background()
			b, dir := newBackend(t)
			id, err := filestore.NewID(volumePrefix)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := b.store.ClaimName(volumePrefix, "db", id, ValidVolumeID); err != nil || got != id {
				t.Fatalf("claimName = %q, %v", got, err)
			}
			step.crash(t, b, id)
			// The half-made volume does not exist yet.
			if _, err := b.Volume(ctx, id); !isNotFound(err) {
				t.Fatalf("Volume of a half-made volume: %v, want NotFound", err)
			}
			if vols, _ := b.ListVolumes(ctx); len(vols) != 0 {
				t.Fatalf("half-made volume listed: %v", vols)
			}

			v, err := reopen(t, dir).CreateVolume(ctx, volSpec("db", 32*backend.MiB))
			if err != nil {
				t.Fatal(err)
			}
			if v.ID != id {
				t.Fatalf("retry created %s, want the claimed %s", v.ID, id)
			}
			img := b.store.volumeImage(id)
			if got := fileSize(t, img); got != 32*backend.MiB {
				t.Fatalf("image is %d bytes, want %d", got, 32*backend.MiB)
			}
			head := make([]byte, 4096)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(head, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(head, make([]byte, 4096)) {
				t.Fatal("the new image holds data from the interrupted attempt")
			}
			if _, err := b.Volume(ctx, id); err != nil {
				t.Fatal(err)
			}
			assertNoTempFiles(t, dir)
		})
	}
}

// The record and the image's rename are made durable by one sync of their
// directory: a crash before it may keep the record without the image, and
// the retried CreateVolume builds the image again.
func TestCreateVolumeRecordWithoutImage(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	src := mustCreate(t, b, volSpec("src", 16*backend.MiB))
	if err := os.WriteFile(b.store.volumeImage(src.ID), pattern(4096, 7), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(b.store.volumeImage(src.ID), 16*backend.MiB); err != nil {
		t.Fatal(err)
	}
	clone := volSpec("clone", 32*backend.MiB)
	clone.Source = &backend.Source{VolumeID: src.ID}
	for _, spec := range []backend.VolumeSpec{volSpec("db", 16*backend.MiB), clone} {
		v := mustCreate(t, b, spec)
		img := b.store.volumeImage(v.ID)
		if err := os.Remove(img); err != nil {
			t.Fatal(err)
		}
		again, err := reopen(t, dir).CreateVolume(ctx, spec)
		if err != nil || again.ID != v.ID {
			t.Fatalf("%s: retry = %v, %v; want %s", spec.Name, again, err, v.ID)
		}
		if got := fileSize(t, img); got != spec.CapacityBytes {
			t.Fatalf("%s: rebuilt image is %d bytes, want %d", spec.Name, got, spec.CapacityBytes)
		}
		if spec.Source != nil && !bytes.Equal(readAll(t, img)[:4096], pattern(4096, 7)) {
			t.Fatalf("%s: rebuilt clone does not hold its source's data", spec.Name)
		}
	}
	assertNoTempFiles(t, dir)
}

func TestDeleteVolume(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("db", 16*backend.MiB))
	img, rec, name := b.store.volumeImage(v.ID), b.store.volumeRecord(v.ID), b.store.NameLink(volumePrefix, "db")
	for _, p := range []string{img, rec, name} {
		if !exists(p) {
			t.Fatalf("%s missing after CreateVolume", p)
		}
	}
	for i := 0; i < 2; i++ {
		if err := b.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatalf("delete #%d: %v", i+1, err)
		}
	}
	for _, p := range []string{img, rec, name} {
		if exists(p) {
			t.Errorf("%s remains after DeleteVolume", p)
		}
	}
	if _, err := b.Volume(ctx, v.ID); !isNotFound(err) {
		t.Fatalf("Volume after delete: %v", err)
	}
	// The name is free again.
	if again := mustCreate(t, b, volSpec("db", 16*backend.MiB)); again.ID == v.ID {
		t.Fatal("a deleted volume's id came back")
	}
	// An unknown, well-formed id is not an error.
	if err := b.DeleteVolume(ctx, "vol-"+strings.Repeat("0", 32)); err != nil {
		t.Fatal(err)
	}

	// The remains of a creation that never finished are removed.
	id, _ := filestore.NewID(volumePrefix)
	if _, err := b.store.ClaimName(volumePrefix, "half", id, ValidVolumeID); err != nil {
		t.Fatal(err)
	}
	if err := buildImage(context.Background(), b.store.volumeImage(id), "", 8*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVolume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if exists(b.store.volumeImage(id)) {
		t.Fatal("image of a half-made volume remains")
	}
	assertNoTempFiles(t, dir)
}

func TestPublishPersists(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("db", 16*backend.MiB))
	blk := volSpec("raw", 16*backend.MiB)
	blk.Block, blk.FsType = true, ""
	bv := mustCreate(t, b, blk)

	pc, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"accessType": "mount", "fsType": "ext4"}; !maps.Equal(pc, want) {
		t.Errorf("publish context %v, want %v", pc, want)
	}
	if pc, err := b.Publish(ctx, bv, backend.Attachment{NodeID: "node-1"}); err != nil || !maps.Equal(pc, map[string]string{"accessType": "block"}) {
		t.Errorf("block publish context %v, %v", pc, err)
	}
	if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-2", ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	// Repeating a publish changes nothing.
	rec := b.store.volumeRecord(v.ID)
	before, _ := os.ReadFile(rec)
	if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-1"}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(rec); !bytes.Equal(before, after) {
		t.Errorf("a repeated publish rewrote the record:\n%s\n%s", before, after)
	}

	// Nothing lives only in memory: another Backend on the directory (a
	// restarted process, or another manager) sees the attachments.
	b2 := reopen(t, dir)
	got, err := b2.Volume(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []backend.Attachment{{NodeID: "node-1"}, {NodeID: "node-2", ReadOnly: true}}
	if !slices.Equal(got.Attachments, want) {
		t.Fatalf("attachments %v, want %v", got.Attachments, want)
	}
	if err := b2.DeleteVolume(ctx, v.ID); !errors.Is(err, csierr.ErrInUse) {
		t.Fatalf("deleting a published volume: %v, want ErrInUse", err)
	}
	if err := b2.Unpublish(ctx, v.ID, "node-1"); err != nil {
		t.Fatal(err)
	}
	if err := b2.Unpublish(ctx, v.ID, "node-1"); err != nil {
		t.Fatalf("repeated unpublish: %v", err)
	}
	got, _ = b.Volume(ctx, v.ID)
	if !slices.Equal(got.Attachments, want[1:]) {
		t.Fatalf("first backend sees %v, want %v", got.Attachments, want[1:])
	}
	if err := b.DeleteVolume(ctx, v.ID); !errors.Is(err, csierr.ErrInUse) {
		t.Fatalf("deleting a volume still published to node-2: %v, want ErrInUse", err)
	}
	if err := b.Unpublish(ctx, v.ID, "node-2"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	assertNoTempFiles(t, dir)
}

func TestExpandVolume(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("db", 16*backend.MiB))
	img := b.store.volumeImage(v.ID)
	writeAt(t, img, 0, pattern(4096, 7))
	allocBefore := allocated(t, img)

	size, err := b.ExpandVolume(ctx, v.ID, 64*backend.MiB)
	if err != nil || size != 64*backend.MiB {
		t.Fatalf("ExpandVolume = %d, %v", size, err)
	}
	if got := fileSize(t, img); got != 64*backend.MiB {
		t.Fatalf("image is %d bytes", got)
	}
	if a := allocated(t, img); a != allocBefore {
		t.Errorf("growing allocated %d bytes, want none (sparse)", a-allocBefore)
	}
	// A smaller request is answered with the current size.
	if size, err := b.ExpandVolume(ctx, v.ID, 32*backend.MiB); err != nil || size != 64*backend.MiB {
		t.Fatalf("shrink request = %d, %v; want 64 MiB", size, err)
	}
	if got := fileSize(t, img); got != 64*backend.MiB {
		t.Fatalf("shrink request changed the image to %d bytes", got)
	}
	stored, err := reopen(t, dir).Volume(ctx, v.ID)
	if err != nil || stored.CapacityBytes != 64*backend.MiB {
		t.Fatalf("stored volume %+v, %v", stored, err)
	}
	// A crash between growing the image and writing the record: the
	// retry completes it.
	if err := growFile(img, 128*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if size, err := b.ExpandVolume(ctx, v.ID, 128*backend.MiB); err != nil || size != 128*backend.MiB {
		t.Fatalf("retried expansion = %d, %v", size, err)
	}
	if c := b.Condition(ctx, mustVolume(t, b, v.ID)); c.Abnormal {
		t.Fatalf("condition after expansion: %+v", c)
	}
	assertNoTempFiles(t, dir)
}

func mustVolume(t *testing.T, b *Backend, id string) *backend.Volume {
	t.Helper()
	v, err := b.Volume(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dataAfter returns the offset of the first data at or after off, or the
// file size when only a hole follows.
func dataAfter(t *testing.T, path string, off int64) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pos, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return fileSize(t, path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

func TestSnapshotsAndCopies(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	const size = 8 * backend.MiB
	src := mustCreate(t, b, volSpec("src", size))
	srcImg := b.store.volumeImage(src.ID)
	// Data at the start, in the middle (unaligned, across a block
	// boundary) and in the last block; holes in between.
	writeAt(t, srcImg, 0, pattern(4096, 1))
	writeAt(t, srcImg, 3*backend.MiB+123, pattern(5000, 2))
	writeAt(t, srcImg, size-4096, pattern(4096, 3))
	srcData := readAll(t, srcImg)
	srcAlloc := allocated(t, srcImg)

	snap, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	if !ValidSnapshotID(snap.ID) || snap.SourceVolumeID != src.ID || snap.SizeBytes != size || !snap.CreatedAt.Equal(testNow) {
		t.Fatalf("snapshot %+v", snap)
	}
	snapImg := b.store.snapshotImage(snap.ID)
	checkCopy := func(what, path string, wantSize int64) {
		t.Helper()
		got := readAll(t, path)
		if int64(len(got)) != wantSize {
			t.Fatalf("%s: %d bytes, want %d", what, len(got), wantSize)
		}
		if !bytes.Equal(got[:size], srcData) {
			t.Fatalf("%s: content differs from the source", what)
		}
		if !bytes.Equal(got[size:], make([]byte, wantSize-size)) {
			t.Fatalf("%s: the grown part is not zero", what)
		}
		// Sparse: no more blocks than the source (plus one block of
		// slack), and the holes are still holes.
		if a := allocated(t, path); a > srcAlloc+4096 {
			t.Errorf("%s: %d bytes allocated, source has %d: the copy is not sparse", what, a, srcAlloc)
		}
		if off := dataAfter(t, path, 4096); off != 3*backend.MiB {
			t.Errorf("%s: data after the first block starts at %d, want the hole up to %d", what, off, 3*backend.MiB)
		}
		if off := dataAfter(t, path, size); off != wantSize {
			t.Errorf("%s: data at %d in the grown part, want a hole", what, off)
		}
	}
	checkCopy("snapshot", snapImg, size)

	// Idempotent by name, for any source.
	other := mustCreate(t, b, volSpec("other", 16*backend.MiB))
	again, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: other.ID})
	if err != nil || again.ID != snap.ID || again.SourceVolumeID != src.ID {
		t.Fatalf("retry = %+v, %v; want the existing snapshot", again, err)
	}
	// The snapshot is a copy: writing to the volume leaves it alone.
	writeAt(t, srcImg, 0, pattern(4096, 9))
	if !bytes.Equal(readAll(t, snapImg), srcData) {
		t.Fatal("writing to the volume changed its snapshot")
	}

	restoreSpec := volSpec("restored", 16*backend.MiB)
	restoreSpec.Source = &backend.Source{SnapshotID: snap.ID}
	restored := mustCreate(t, b, restoreSpec)
	checkCopy("volume from snapshot", b.store.volumeImage(restored.ID), 16*backend.MiB)
	if restored.Source == nil || restored.Source.SnapshotID != snap.ID {
		t.Errorf("restored volume's source %+v", restored.Source)
	}

	writeAt(t, srcImg, 0, pattern(4096, 1)) // back to srcData
	cloneSpec := volSpec("clone", size)
	cloneSpec.Source = &backend.Source{VolumeID: src.ID}
	clone := mustCreate(t, b, cloneSpec)
	checkCopy("clone", b.store.volumeImage(clone.ID), size)

	// A snapshot outlives its volume, and still restores.
	if err := b.DeleteVolume(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Snapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	late := volSpec("late", size)
	late.Source = &backend.Source{SnapshotID: snap.ID}
	checkCopy("volume from the snapshot of a deleted volume", b.store.volumeImage(mustCreate(t, b, late).ID), size)
	if _, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s2", SourceVolumeID: src.ID}); !isNotFound(err) {
		t.Fatalf("snapshot of a deleted volume: %v, want NotFound", err)
	}

	s2, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s3", SourceVolumeID: clone.ID})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := reopen(t, dir).ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || !slices.Equal([]string{snaps[0].ID, snaps[1].ID}, slices.Sorted(slices.Values([]string{snap.ID, s2.ID}))) {
		t.Fatalf("ListSnapshots = %v, want %s and %s sorted", snaps, snap.ID, s2.ID)
	}

	for i := 0; i < 2; i++ {
		if err := b.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{snapImg, b.store.snapshotRecord(snap.ID), b.store.NameLink(snapshotPrefix, "s1")} {
		if exists(p) {
			t.Errorf("%s remains after DeleteSnapshot", p)
		}
	}
	if _, err := b.Snapshot(ctx, snap.ID); !isNotFound(err) {
		t.Fatalf("Snapshot after delete: %v", err)
	}
	assertNoTempFiles(t, dir)
}

func TestCreateSnapshotResume(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("v", 16*backend.MiB))
	writeAt(t, b.store.volumeImage(v.ID), backend.MiB, pattern(100, 4))
	id, _ := filestore.NewID(snapshotPrefix)
	if _, err := b.store.ClaimName(snapshotPrefix, "s", id, ValidSnapshotID); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.store.snapshotImage(id)+".tmp", []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	snap, err := reopen(t, dir).CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	if snap.ID != id {
		t.Fatalf("retry made %s, want the claimed %s", snap.ID, id)
	}
	if !bytes.Equal(readAll(t, b.store.snapshotImage(id)), readAll(t, b.store.volumeImage(v.ID))) {
		t.Fatal("resumed snapshot differs from its volume")
	}
	assertNoTempFiles(t, dir)
}

func TestListVolumesSorted(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	var want []string
	for _, n := range []string{"e", "d", "c", "b", "a", "f"} {
		want = append(want, mustCreate(t, b, volSpec(n, 16*backend.MiB)).ID)
	}
	sort.Strings(want)
	// Files that are not records of ours are ignored.
	for _, junk := range []string{"notes.json", "vol-XYZ.json", "." + want[0] + ".json.tmp-123", want[0] + ".img.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, volumesDir, junk), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	vols, err := b.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vols {
		got = append(got, v.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListVolumes ids %v, want %v", got, want)
	}
	// A volume whose record vanished while listing is left out.
	if err := os.Remove(b.store.volumeRecord(want[2])); err != nil {
		t.Fatal(err)
	}
	if vols, err := b.ListVolumes(ctx); err != nil || len(vols) != 5 {
		t.Fatalf("ListVolumes after a record went away: %d, %v", len(vols), err)
	}
	// A corrupt record is an error, not a silent omission.
	if err := os.WriteFile(b.store.volumeRecord(want[3]), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ListVolumes(ctx); err == nil {
		t.Fatal("ListVolumes hid a corrupt record")
	}
}

func TestModifyVolume(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		params  map[string]string
		wantErr bool
		want    string // directIO afterwards
	}{
		{"turn off", map[string]string{ParamDirectIO: "false"}, false, "false"},
		{"turn on", map[string]string{ParamDirectIO: "true"}, false, "true"},
		{"nothing", map[string]string{}, false, ""},
		{"bad value", map[string]string{ParamDirectIO: "off"}, true, ""},
		{"empty value", map[string]string{ParamDirectIO: ""}, true, ""},
		{"unknown", map[string]string{"cache": "none"}, true, ""},
		{"unknown beside a good one", map[string]string{ParamDirectIO: "false", "cache": "none"}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, dir := newBackend(t)
			v := mustCreate(t, b, volSpec("v", 16*backend.MiB))
			err := b.ModifyVolume(ctx, v.ID, tt.params)
			if tt.wantErr {
				if !errors.Is(err, csierr.ErrInvalid) {
					t.Fatalf("got %v, want InvalidArgument", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			got := mustVolume(t, reopen(t, dir), v.ID)
			if got.MutableParameters[ParamDirectIO] != tt.want {
				t.Fatalf("directIO %q, want %q", got.MutableParameters[ParamDirectIO], tt.want)
			}
			if directIO(got) != (tt.want == "true") {
				t.Fatalf("directIO(%v) = %t", got.MutableParameters, directIO(got))
			}
		})
	}
}

func TestNodeRegistration(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	if known, err := b.NodeKnown(ctx, "node-1"); known || err != nil {
		t.Fatalf("unregistered node known: %t, %v", known, err)
	}
	for i := 0; i < 2; i++ {
		if err := b.ForNode("node-1").Register(ctx, "node-1"); err != nil {
			t.Fatal(err)
		}
	}
	if known, err := reopen(t, dir).NodeKnown(ctx, "node-1"); !known || err != nil {
		t.Fatalf("registered node unknown: %t, %v", known, err)
	}
	if known, _ := b.NodeKnown(ctx, "node-2"); known {
		t.Fatal("node-2 known without registering")
	}
	// A file where a node directory would be is not a node.
	if err := os.WriteFile(filepath.Join(dir, filestore.NodesDir, "node-3"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if known, _ := b.NodeKnown(ctx, "node-3"); known {
		t.Fatal("a file counts as a registered node")
	}
}

func TestCapacityAndCondition(t *testing.T) {
	ctx := context.Background()
	b, _ := newBackend(t)
	c, err := b.Capacity(ctx)
	if err != nil || c <= 0 {
		t.Fatalf("Capacity = %d, %v", c, err)
	}
	v := mustCreate(t, b, volSpec("v", 16*backend.MiB))
	if cond := b.Condition(ctx, v); cond.Abnormal {
		t.Fatalf("new volume abnormal: %+v", cond)
	}
	if err := os.Truncate(b.store.volumeImage(v.ID), 8*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if cond := b.Condition(ctx, v); !cond.Abnormal || cond.Message == "" {
		t.Fatalf("truncated image: %+v", cond)
	}
	if err := os.Remove(b.store.volumeImage(v.ID)); err != nil {
		t.Fatal(err)
	}
	if cond := b.Condition(ctx, v); !cond.Abnormal {
		t.Fatalf("missing image: %+v", cond)
	}
}

// TestNoTempFilesLeft runs a sequence of every kind of change and checks
// that only complete records, images and names remain.
func TestNoTempFilesLeft(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("v", 16*backend.MiB))
	steps := []func() error{
		func() error { _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "n"}); return err },
		func() error { return b.ModifyVolume(ctx, v.ID, map[string]string{ParamDirectIO: "false"}) },
		func() error { _, err := b.ExpandVolume(ctx, v.ID, 32*backend.MiB); return err },
		func() error { return b.Unpublish(ctx, v.ID, "n") },
		func() error {
			s, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: v.ID})
			if err != nil {
				return err
			}
			spec := volSpec("copy", 32*backend.MiB)
			spec.Source = &backend.Source{SnapshotID: s.ID}
			_, err = b.CreateVolume(ctx, spec)
			return err
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		assertNoTempFiles(t, dir)
	}
	// Every record is complete JSON.
	for _, d := range []string{volumesDir, snapshotsDir} {
		recs, _ := filepath.Glob(filepath.Join(dir, d, "*.json"))
		if len(recs) == 0 {
			t.Fatalf("no records in %s", d)
		}
		for _, r := range recs {
			var m map[string]any
			if err := json.Unmarshal(readAll(t, r), &m); err != nil {
				t.Errorf("%s: %v", r, err)
			}
		}
	}
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	for p := range tree(t, dir) {
		if strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("temporary file %s left behind", p)
		}
	}
}

func TestCopyImageEmptyAndHoleOnly(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{0, 5 * backend.MiB} {
		src := filepath.Join(dir, "src.img")
		if err := os.WriteFile(src, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(src, size); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "dst.img")
		if err := buildImage(context.Background(), dst, src, 0); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if got := fileSize(t, dst); got != size {
			t.Fatalf("copy of a %d-byte hole is %d bytes", size, got)
		}
		if a := allocated(t, dst); a != 0 {
			t.Errorf("copy of a hole has %d bytes allocated", a)
		}
		if exists(dst + ".tmp") {
			t.Error("temporary image left behind")
		}
	}
	if err := buildImage(context.Background(), filepath.Join(dir, "x.img"), filepath.Join(dir, "missing.img"), backend.MiB); err == nil {
		t.Fatal("building from a missing source succeeded")
	}
	if exists(filepath.Join(dir, "x.img")) || exists(filepath.Join(dir, "x.img.tmp")) {
		t.Fatal("a failed build left files")
	}
}

// A copy from a missing source fails before the name is claimed.
func TestCreateFromMissingSourceLeavesNoName(t *testing.T) {
	dir := t.TempDir()
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.CreateVolume(context.Background(), backend.VolumeSpec{Name: "copy", CapacityBytes: MinSize, FsType: "ext4",
		AccessMode: "SINGLE_NODE_WRITER", Source: &backend.Source{VolumeID: "vol-00000000000000000000000000000000"}})
	if !errors.Is(err, csierr.ErrNotFound) {
		t.Fatalf("got %v, want NotFound", err)
	}
	if names, _ := os.ReadDir(filepath.Join(dir, "names")); len(names) != 0 {
		t.Fatalf("a failed copy left %d name links behind", len(names))
	}
}

// backendCalls is how many loop calls named call ended with status.
func backendCalls(t *testing.T, call, status string) uint64 {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "swarm_csi_backend_call_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["backend"] == "loop" && labels["call"] == call && labels["status"] == status {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// Image builds are measured as backend calls, failures apart.
func TestImageBuildsAreMeasured(t *testing.T) {
	dir := t.TempDir()
	before := map[string]uint64{}
	for _, k := range []string{"create image/ok", "copy image/ok", "copy image/error"} {
		call, status, _ := strings.Cut(k, "/")
		before[k] = backendCalls(t, call, status)
	}
	src := filepath.Join(dir, "a.img")
	if err := buildImage(context.Background(), src, "", backend.MiB); err != nil {
		t.Fatal(err)
	}
	if err := buildImage(context.Background(), filepath.Join(dir, "b.img"), src, 0); err != nil {
		t.Fatal(err)
	}
	if err := buildImage(context.Background(), filepath.Join(dir, "c.img"), filepath.Join(dir, "missing.img"), 0); err == nil {
		t.Fatal("a copy of a missing image succeeded")
	}
	for k, was := range before {
		call, status, _ := strings.Cut(k, "/")
		if got := backendCalls(t, call, status); got != was+1 {
			t.Errorf("%s %s: %d calls recorded, want %d", call, status, got, was+1)
		}
	}
}

// A new volume's image is blank until something is written to it; a clone
// of a written volume is not.
func TestBlank(t *testing.T) {
	ctx := context.Background()
	b, _ := newBackend(t)
	n := b.ForNode("node-1")
	v := mustCreate(t, b, volSpec("v", 16*backend.MiB))
	if blank, err := n.Blank(ctx, v); !blank || err != nil {
		t.Fatalf("Blank of a new volume = %t, %v", blank, err)
	}
	f, err := os.OpenFile(b.store.volumeImage(v.ID), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 8*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if blank, err := n.Blank(ctx, v); blank || err != nil {
		t.Fatalf("Blank of a written volume = %t, %v", blank, err)
	}
	spec := volSpec("clone", 16*backend.MiB)
	spec.Source = &backend.Source{VolumeID: v.ID}
	clone := mustCreate(t, b, spec)
	if blank, err := n.Blank(ctx, clone); blank || err != nil {
		t.Fatalf("Blank of a clone of a written volume = %t, %v", blank, err)
	}
	gone := *v
	gone.ID = "vol-" + strings.Repeat("0", 32)
	if _, err := n.Blank(ctx, &gone); err == nil {
		t.Fatal("Blank of a volume without an image succeeded")
	}
}
