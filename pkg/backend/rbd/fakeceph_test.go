package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// fakeCeph plays the rbd tool over an in-memory pool, for the commands the
// controller side runs, with Ceph's refusals (exists, not found, snapshots
// with clones, clone v2's snapshot trash). failAt makes the n-th command
// (counting from 1) fail as if the process had died before doing it; down
// makes every command fail as when no monitor answers.
type fakeCeph struct {
	mu     sync.Mutex
	images map[string]*fakeImage // "pool/name"
	trash  map[string]*fakeImage // "pool/id"
	nextID int
	calls  int
	failAt int
	down   bool
}

type fakeImage struct {
	id, pool, name string
	size           int64
	meta           map[string]string
	snaps          map[string]*fakeSnap
	parent         *fakeSnap
	parentImage    *fakeImage
}

type fakeSnap struct {
	name     string
	size     int64
	trash    bool
	children int
}

func newFakeCeph() *fakeCeph {
	return &fakeCeph{images: map[string]*fakeImage{}, trash: map[string]*fakeImage{}}
}

var errENOENT = exitErr(2, "rbd: (2) No such file or directory\n")

func (f *fakeCeph) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls == f.failAt {
		return nil, exitErr(110, "rbd: (110) Connection timed out\n")
	}
	if f.down {
		return nil, exitErr(110, "rbd: couldn't connect to the cluster!\n")
	}
	if name != "rbd" || len(args) < 7 {
		return nil, fmt.Errorf("fakeCeph: unexpected %s %v", name, args)
	}
	a := args[6:]
	var pos []string // positional arguments after the subcommand
	for i := 0; i < len(a); i++ {
		switch {
		case a[i] == "--":
			pos = append(pos, a[i+1:]...)
			i = len(a)
		case a[i] == "--no-progress" || a[i] == "--all":
		case strings.HasPrefix(a[i], "--") || a[i] == "-t":
			i++ // an option with a value
		default:
			pos = append(pos, a[i])
		}
	}
	opt := func(name string) string {
		for i := 0; i+1 < len(a); i++ {
			if a[i] == name {
				return a[i+1]
			}
		}
		return ""
	}
	jsonOut := func(v any) ([]byte, error) { return json.Marshal(v) }
	img := func(spec string) (*fakeImage, error) {
		if i := f.images[spec]; i != nil {
			return i, nil
		}
		return nil, errENOENT
	}
	switch {
	case pos[0] == "create":
		if f.images[pos[1]] != nil {
			return nil, exitErr(17, "rbd: create error: (17) File exists\n")
		}
		size, _ := strconv.ParseInt(strings.TrimSuffix(opt("--size"), "M"), 10, 64)
		f.add(pos[1], size<<20, nil, nil)
	case pos[0] == "clone":
		pimg, snap := f.snap(pos[1])
		if snap == nil {
			return nil, errENOENT
		}
		if f.images[pos[2]] != nil {
			return nil, exitErr(17, "rbd: clone error: (17) File exists\n")
		}
		snap.children++
		f.add(pos[2], snap.size, snap, pimg)
	case pos[0] == "info":
		var i *fakeImage
		if id := opt("--image-id"); id != "" {
			i = f.trash[opt("--pool")+"/"+id]
		} else {
			i = f.images[pos[1]]
		}
		if i == nil {
			return nil, errENOENT
		}
		out := map[string]any{"name": i.name, "id": i.id, "size": i.size, "snapshot_count": len(i.snaps)}
		if i.parent != nil {
			out["parent"] = map[string]any{"pool": i.parentImage.pool, "image": i.parentImage.name, "id": i.parentImage.id,
				"snapshot": i.parent.name, "trash": f.trash[i.parentImage.pool+"/"+i.parentImage.id] != nil}
		}
		return jsonOut(out)
	case pos[0] == "resize":
		i, err := img(pos[1])
		if err != nil {
			return nil, err
		}
		size, _ := strconv.ParseInt(strings.TrimSuffix(opt("--size"), "M"), 10, 64)
		i.size = size << 20
	case pos[0] == "rm":
		i, err := img(pos[1])
		if err != nil {
			return nil, err
		}
		if len(i.snaps) > 0 {
			return nil, exitErr(39, "rbd: image has snapshots\n")
		}
		delete(f.images, pos[1])
		f.detach(i)
	case pos[0] == "status":
		if _, err := img(pos[1]); err != nil {
			return nil, err
		}
		return []byte(`{"watchers":[]}`), nil
	case pos[0] == "image-meta" && pos[1] == "get":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		v, ok := i.meta[pos[3]]
		if !ok {
			return nil, errENOENT
		}
		return []byte(v + "\n"), nil
	case pos[0] == "image-meta" && pos[1] == "set":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		i.meta[pos[3]] = pos[4]
	case pos[0] == "image-meta" && pos[1] == "remove":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		if _, ok := i.meta[pos[3]]; !ok {
			return nil, errENOENT
		}
		delete(i.meta, pos[3])
	case pos[0] == "image-meta" && pos[1] == "list":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		return jsonOut(i.meta)
	case pos[0] == "config":
		if _, err := img(pos[3]); err != nil {
			return nil, err
		}
	case pos[0] == "snap" && pos[1] == "create":
		spec, snapName, _ := strings.Cut(pos[2], "@")
		i, err := img(spec)
		if err != nil {
			return nil, err
		}
		if i.snaps[snapName] != nil {
			return nil, exitErr(17, "rbd: failed to create snapshot: (17) File exists\n")
		}
		i.snaps[snapName] = &fakeSnap{name: snapName, size: i.size}
	case pos[0] == "snap" && pos[1] == "rm":
		i, snap := f.snap(pos[2])
		if snap == nil || snap.trash {
			return nil, errENOENT
		}
		if snap.children > 0 {
			snap.trash = true // clone v2: waits for its clones
		} else {
			delete(i.snaps, snap.name)
		}
	case pos[0] == "snap" && pos[1] == "ls":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		var out []map[string]any
		for _, s := range i.snaps {
			ns := "user"
			if s.trash {
				ns = "trash"
			}
			out = append(out, map[string]any{"name": s.name, "size": s.size, "namespace": map[string]string{"type": ns}})
		}
		return jsonOut(out)
	case pos[0] == "trash" && pos[1] == "mv":
		i, err := img(pos[2])
		if err != nil {
			return nil, err
		}
		delete(f.images, pos[2])
		f.trash[i.pool+"/"+i.id] = i
	case pos[0] == "trash" && pos[1] == "ls":
		out := []map[string]string{}
		for _, i := range f.trash {
			if i.pool == pos[2] {
				out = append(out, map[string]string{"id": i.id, "name": i.name})
			}
		}
		return jsonOut(out)
	case pos[0] == "trash" && pos[1] == "rm":
		key := opt("--pool") + "/" + opt("--image-id")
		i := f.trash[key]
		if i == nil {
			return nil, errENOENT
		}
		if len(i.snaps) > 0 {
			return nil, exitErr(39, "rbd: image has snapshots\n")
		}
		delete(f.trash, key)
		f.detach(i)
	default:
		return nil, fmt.Errorf("fakeCeph: unknown command %v", pos)
	}
	return nil, nil
}

func (f *fakeCeph) add(spec string, size int64, parent *fakeSnap, parentImage *fakeImage) {
	pool, name, _ := strings.Cut(spec, "/")
	f.nextID++
	f.images[spec] = &fakeImage{id: fmt.Sprintf("id%d", f.nextID), pool: pool, name: name, size: size,
		meta: map[string]string{}, snaps: map[string]*fakeSnap{}, parent: parent, parentImage: parentImage}
}

func (f *fakeCeph) snap(spec string) (*fakeImage, *fakeSnap) {
	img, snap, _ := strings.Cut(spec, "@")
	i := f.images[img]
	if i == nil || i.snaps[snap] == nil {
		return nil, nil
	}
	return i, i.snaps[snap]
}

// detach is a removed clone letting go of its parent's snapshot, which
// goes if it waited in the trash for it.
func (f *fakeCeph) detach(i *fakeImage) {
	if i.parent == nil {
		return
	}
	i.parent.children--
	if i.parent.trash && i.parent.children == 0 {
		delete(i.parentImage.snaps, i.parent.name)
	}
}

// state describes the pool: images with their snapshots and metadata keys,
// and the trash.
func (f *fakeCeph) state() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for spec, i := range f.images {
		var snaps, keys []string
		for s := range i.snaps {
			snaps = append(snaps, s)
		}
		for k := range i.meta {
			keys = append(keys, k)
		}
		sort.Strings(snaps)
		sort.Strings(keys)
		out = append(out, fmt.Sprintf("%s size=%d snaps=%v meta=%v", spec, i.size, snaps, keys))
	}
	for _, i := range f.trash {
		out = append(out, "trash:"+i.pool+"/"+i.name)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// A crash (here: a command that never happens) at any point of an RPC,
// followed by the CO's retry of that RPC, ends where a run without the
// crash ends.
func TestRetryAfterCrashAtAnyPoint(t *testing.T) {
	ctx := context.Background()
	spec := backend.VolumeSpec{Name: "db", CapacityBytes: 64 * backend.MiB, FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER",
		MutableParameters: map[string]string{ParamQoSIOPS: "100"}}
	// lifecycle is a whole life, one RPC a step: create, snapshot, a
	// volume from it, a clone, expand, publish, unpublish, modify, then
	// every delete, source first.
	lifecycle := func(b *Backend) []func() error {
		var v, r, c *backend.Volume
		var sn *backend.Snapshot
		return []func() error{
			func() (err error) { v, err = b.CreateVolume(ctx, spec); return err },
			func() (err error) {
				sn, err = b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "snap", SourceVolumeID: v.ID, FsType: "ext4"})
				return err
			},
			func() (err error) {
				restore := spec
				restore.Name, restore.CapacityBytes, restore.Source = "restored", 128*backend.MiB, &backend.Source{SnapshotID: sn.ID}
				r, err = b.CreateVolume(ctx, restore)
				return err
			},
			func() (err error) {
				clone := spec
				clone.Name, clone.Source = "clone", &backend.Source{VolumeID: v.ID}
				c, err = b.CreateVolume(ctx, clone)
				return err
			},
			func() error { _, err := b.ExpandVolume(ctx, c.ID, 96*backend.MiB); return err },
			func() error { _, err := b.Publish(ctx, r, backend.Attachment{NodeID: "n1"}); return err },
			func() error { return b.Unpublish(ctx, r.ID, "n1") },
			func() error { return b.ModifyVolume(ctx, r.ID, map[string]string{ParamQoSBPS: "0"}) },
			func() error { return b.DeleteSnapshot(ctx, sn.ID) },
			func() error { return b.DeleteVolume(ctx, v.ID) },
			func() error { return b.DeleteVolume(ctx, c.ID) },
			func() error { return b.DeleteVolume(ctx, r.ID) },
		}
	}
	clean := newFakeCeph()
	for i, step := range lifecycle(newTestBackend(t, clean)) {
		if err := step(); err != nil {
			t.Fatalf("without a crash, step %d: %v", i+1, err)
		}
	}
	want := clean.state()
	if want != "rbd/test-index size=0 snaps=[] meta=[]" {
		t.Fatalf("the lifecycle leaves:\n%s", want)
	}
	for n := 1; n <= clean.calls; n++ {
		f := newFakeCeph()
		f.failAt = n
		crashed := false
		for i, step := range lifecycle(newTestBackend(t, f)) {
			err := step()
			if err != nil {
				crashed = true
				err = step() // the CO's retry
			}
			if err != nil {
				t.Fatalf("crash at command %d, retry of step %d: %v\n%s", n, i+1, err, f.state())
			}
		}
		if !crashed {
			t.Fatalf("crash at command %d went unnoticed", n)
		}
		if got := f.state(); got != want {
			t.Fatalf("crash at command %d, then retry, leaves:\n%s\nwant:\n%s", n, got, want)
		}
	}
}

// The same name with other arguments is the existing volume, for the
// controller to refuse; a snapshot's name with another source likewise.
func TestNamesAreIdempotent(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, newFakeCeph())
	spec := backend.VolumeSpec{Name: "web", CapacityBytes: 32 * backend.MiB}
	v1, err := b.CreateVolume(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	other := spec
	other.CapacityBytes, other.Parameters = 64*backend.MiB, map[string]string{ParamPool: "fast"}
	v2, err := b.CreateVolume(ctx, other)
	if err != nil || v2.ID != v1.ID || v2.CapacityBytes != 32*backend.MiB {
		t.Fatalf("same name, other arguments: %+v, %v; want the existing volume", v2, err)
	}
	if _, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "x", CapacityBytes: backend.MiB, Parameters: map[string]string{ParamPool: "a/b"}}); csierr.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad pool: %v", err)
	}
	if _, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: "rbd/" + b.names.volumeImage(nameHash("nope"))}); csierr.Code(err) != codes.NotFound {
		t.Fatalf("snapshot of a missing volume: %v", err)
	}
	vols, err := b.ListVolumes(ctx)
	if err != nil || len(vols) != 1 || vols[0].ID != v1.ID {
		t.Fatalf("ListVolumes = %v, %v", vols, err)
	}
	// A snapshot blocks its volume's deletion.
	sn, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: v1.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVolume(ctx, v1.ID); csierr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "snapshots") {
		t.Fatalf("DeleteVolume with a snapshot: %v", err)
	}
	if err := b.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVolume(ctx, v1.ID); err != nil {
		t.Fatal(err)
	}
}
