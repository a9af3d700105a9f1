package rbd

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// fakeCeph plays a Ceph cluster over in-memory pools, for the operations
// the controller side asks of it, with Ceph's refusals (exists, not found,
// watchers, snapshots with clones, clone v2's snapshot trash). failAt makes
// the n-th call (counting from 1) fail as if the connection had timed out
// before doing it; down makes every call fail as when no monitor answers;
// errs queues answers for an operation by name, before it runs (nil: the
// call goes through). ops records every call's operation name.
type fakeCeph struct {
	mu          sync.Mutex
	images      map[string]*fakeImage    // "pool/name"
	trash       map[string]*fakeImage    // "pool/id"
	blocklisted map[string]time.Duration // client address: expiry
	nextID      int
	calls       int
	failAt      int
	down        bool
	errs        map[string][]error
	ops         []string
	// delay is how long every call takes (set before the calls start).
	delay time.Duration
	// listed counts the keys MetaList has returned.
	listed int
}

var _ cluster = (*fakeCeph)(nil)

type fakeImage struct {
	id, pool, name string
	size           int64
	meta           map[string]string
	snaps          map[string]*fakeSnap
	parent         *fakeSnap
	parentImage    *fakeImage
	watchers       []string
	lockOwner      string
}

type fakeSnap struct {
	name     string
	size     int64
	trash    bool
	children int
}

func newFakeCeph() *fakeCeph {
	return &fakeCeph{images: map[string]*fakeImage{}, trash: map[string]*fakeImage{}, blocklisted: map[string]time.Duration{}}
}

// call counts a call of op on what and answers for a failure planned for
// it; the caller holds f.mu until it returns.
func (f *fakeCeph) call(op, what string) error {
	time.Sleep(f.delay)
	f.mu.Lock()
	f.calls++
	f.ops = append(f.ops, op)
	cmd := "rbd " + op + " " + what
	switch {
	case f.calls == f.failAt:
		return &Error{Kind: KindTimeout, Cmd: cmd, Msg: "(110) Connection timed out"}
	case f.down:
		return &Error{Kind: KindUnreachable, Cmd: cmd, Msg: "no Ceph monitor answered"}
	case len(f.errs[op]) > 0:
		err := f.errs[op][0]
		f.errs[op] = f.errs[op][1:]
		return err
	}
	return nil
}

func notFound(what string) error {
	return &Error{Kind: KindNotFound, Cmd: "rbd " + what, Msg: "(2) No such file or directory"}
}

func (f *fakeCeph) image(ref imageRef) (*fakeImage, error) {
	if i := f.images[ref.String()]; i != nil {
		return i, nil
	}
	return nil, notFound(ref.String())
}

func (f *fakeCeph) Create(_ context.Context, _ creds, ref imageRef, size int64, _ imageOptions) error {
	defer f.mu.Unlock()
	if err := f.call("create", ref.String()); err != nil {
		return err
	}
	if f.images[ref.String()] != nil {
		return &Error{Kind: KindExists, Cmd: "rbd create " + ref.String(), Msg: "(17) File exists"}
	}
	f.add(ref, (size+backend.MiB-1)/backend.MiB*backend.MiB, nil, nil)
	return nil
}

func (f *fakeCeph) Clone(_ context.Context, _ creds, parent snapRef, ref imageRef, _ imageOptions) error {
	defer f.mu.Unlock()
	if err := f.call("clone", ref.String()); err != nil {
		return err
	}
	pimg, snap := f.snap(parent)
	if snap == nil {
		return notFound(parent.String())
	}
	if f.images[ref.String()] != nil {
		return &Error{Kind: KindExists, Cmd: "rbd clone " + ref.String(), Msg: "(17) File exists"}
	}
	snap.children++
	f.add(ref, snap.size, snap, pimg)
	return nil
}

func (f *fakeCeph) describe(i *fakeImage) *imageInfo {
	info := &imageInfo{Name: i.name, ID: i.id, Size: i.size}
	if i.parent != nil {
		info.Parent = &parentInfo{Pool: i.parentImage.pool, Image: i.parentImage.name, ID: i.parentImage.id,
			Snapshot: i.parent.name, Trash: f.trash[i.parentImage.pool+"/"+i.parentImage.id] != nil}
	}
	return info
}

func (f *fakeCeph) Info(_ context.Context, _ creds, ref imageRef) (*imageInfo, error) {
	defer f.mu.Unlock()
	if err := f.call("info", ref.String()); err != nil {
		return nil, err
	}
	i, err := f.image(ref)
	if err != nil {
		return nil, err
	}
	return f.describe(i), nil
}

func (f *fakeCeph) Resize(_ context.Context, _ creds, ref imageRef, size int64) error {
	defer f.mu.Unlock()
	if err := f.call("resize", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	i.size = size
	return nil
}

func (f *fakeCeph) Remove(_ context.Context, _ creds, ref imageRef) error {
	defer f.mu.Unlock()
	if err := f.call("rm", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	if len(i.snaps) > 0 || len(i.watchers) > 0 {
		return &Error{Kind: KindBusy, Cmd: "rbd rm " + ref.String(), Msg: "image has snapshots or watchers"}
	}
	delete(f.images, ref.String())
	f.detach(i)
	return nil
}

func (f *fakeCeph) TrashMove(_ context.Context, _ creds, ref imageRef) error {
	defer f.mu.Unlock()
	if err := f.call("trash mv", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	delete(f.images, ref.String())
	f.trash[i.pool+"/"+i.id] = i
	return nil
}

func (f *fakeCeph) Trash(_ context.Context, _ creds, pool string) ([]trashEntry, error) {
	defer f.mu.Unlock()
	if err := f.call("trash ls", pool); err != nil {
		return nil, err
	}
	var out []trashEntry
	for _, i := range f.trash {
		if i.pool == pool {
			out = append(out, trashEntry{ID: i.id, Name: i.name})
		}
	}
	return out, nil
}

func (f *fakeCeph) TrashInfo(_ context.Context, _ creds, pool, id string) (*imageInfo, error) {
	defer f.mu.Unlock()
	if err := f.call("info", pool+"/"+id); err != nil {
		return nil, err
	}
	i := f.trash[pool+"/"+id]
	if i == nil {
		return nil, notFound(pool + "/" + id)
	}
	return f.describe(i), nil
}

func (f *fakeCeph) TrashRemove(_ context.Context, _ creds, pool, id string) error {
	defer f.mu.Unlock()
	if err := f.call("trash rm", pool+"/"+id); err != nil {
		return err
	}
	i := f.trash[pool+"/"+id]
	if i == nil {
		return notFound(pool + "/" + id)
	}
	if len(i.snaps) > 0 {
		return &Error{Kind: KindBusy, Cmd: "rbd trash rm " + pool + "/" + id, Msg: "image has snapshots"}
	}
	delete(f.trash, pool+"/"+id)
	f.detach(i)
	return nil
}

func (f *fakeCeph) SnapCreate(_ context.Context, _ creds, snap snapRef) error {
	defer f.mu.Unlock()
	if err := f.call("snap create", snap.String()); err != nil {
		return err
	}
	i, err := f.image(snap.imageRef)
	if err != nil {
		return err
	}
	if i.snaps[snap.snap] != nil {
		return &Error{Kind: KindExists, Cmd: "rbd snap create " + snap.String(), Msg: "(17) File exists"}
	}
	i.snaps[snap.snap] = &fakeSnap{name: snap.snap, size: i.size}
	return nil
}

func (f *fakeCeph) SnapRemove(_ context.Context, _ creds, snap snapRef) error {
	defer f.mu.Unlock()
	if err := f.call("snap rm", snap.String()); err != nil {
		return err
	}
	i, s := f.snap(snap)
	if s == nil || s.trash {
		return notFound(snap.String())
	}
	if s.children > 0 {
		s.trash = true // clone v2: waits for its clones
	} else {
		delete(i.snaps, s.name)
	}
	return nil
}

func (f *fakeCeph) Snapshots(_ context.Context, _ creds, ref imageRef) ([]snapInfo, error) {
	defer f.mu.Unlock()
	if err := f.call("snap ls", ref.String()); err != nil {
		return nil, err
	}
	i, err := f.image(ref)
	if err != nil {
		return nil, err
	}
	var out []snapInfo
	for _, s := range i.snaps {
		ns := snapUser
		if s.trash {
			ns = snapTrash
		}
		out = append(out, snapInfo{Name: s.name, Size: s.size, Namespace: ns})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

func (f *fakeCeph) MetaGet(_ context.Context, _ creds, ref imageRef, key string) (string, error) {
	defer f.mu.Unlock()
	if err := f.call("image-meta get", ref.String()); err != nil {
		return "", err
	}
	i, err := f.image(ref)
	if err != nil {
		return "", err
	}
	v, ok := i.meta[key]
	if !ok {
		return "", notFound(ref.String() + " " + key)
	}
	return v, nil
}

func (f *fakeCeph) MetaSet(_ context.Context, _ creds, ref imageRef, key, value string) error {
	defer f.mu.Unlock()
	if err := f.call("image-meta set", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	i.meta[key] = value
	return nil
}

func (f *fakeCeph) MetaRemove(_ context.Context, _ creds, ref imageRef, key string) error {
	defer f.mu.Unlock()
	if err := f.call("image-meta remove", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	if _, ok := i.meta[key]; !ok && !strings.HasSuffix(ref.image, "-index") {
		return notFound(ref.String() + " " + key)
	}
	delete(i.meta, key)
	return nil
}

func (f *fakeCeph) MetaSetKeys(_ context.Context, _ creds, ref imageRef, kv map[string]string) error {
	defer f.mu.Unlock()
	if err := f.call("image-meta set", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	maps.Copy(i.meta, kv)
	return nil
}

func (f *fakeCeph) MetaGetKeys(_ context.Context, _ creds, ref imageRef, keys []string) (map[string]string, error) {
	defer f.mu.Unlock()
	if err := f.call("image-meta get", ref.String()); err != nil {
		return nil, err
	}
	i, err := f.image(ref)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, k := range keys {
		if v, ok := i.meta[k]; ok {
			out[k] = v
		}
	}
	return out, nil
}

func (f *fakeCeph) MetaList(_ context.Context, _ creds, ref imageRef, prefix, after string, max int) ([]metaEntry, bool, error) {
	defer f.mu.Unlock()
	if err := f.call("image-meta list", ref.String()); err != nil {
		return nil, false, err
	}
	i, err := f.image(ref)
	if err != nil {
		return nil, false, err
	}
	var out []metaEntry
	for _, k := range slices.Sorted(maps.Keys(i.meta)) {
		if !strings.HasPrefix(k, prefix) || k <= after {
			continue
		}
		if max > 0 && len(out) == max {
			return out, true, nil
		}
		out = append(out, metaEntry{k, i.meta[k]})
		f.listed++
	}
	return out, false, nil
}

// SetOption keeps the option where librbd does: image metadata "conf_".
func (f *fakeCeph) SetOption(_ context.Context, _ creds, ref imageRef, key, value string) error {
	defer f.mu.Unlock()
	if err := f.call("config image set", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	i.meta["conf_"+key] = value
	return nil
}

func (f *fakeCeph) Watchers(_ context.Context, _ creds, ref imageRef) ([]string, error) {
	defer f.mu.Unlock()
	if err := f.call("status", ref.String()); err != nil {
		return nil, err
	}
	i, err := f.image(ref)
	if err != nil {
		return nil, err
	}
	return slices.Clone(i.watchers), nil
}

// Blocklist fences a client: its watches go, as the OSDs drop them; the
// exclusive lock it holds stays until someone breaks it, as in Ceph.
func (f *fakeCeph) Blocklist(_ context.Context, _ creds, addr string, d time.Duration) error {
	defer f.mu.Unlock()
	if err := f.call("blocklist", addr); err != nil {
		return err
	}
	f.blocklisted[addr] = d
	for _, i := range f.images {
		i.watchers = slices.DeleteFunc(i.watchers, func(w string) bool { return w == addr })
	}
	return nil
}

func (f *fakeCeph) LockOwners(_ context.Context, _ creds, ref imageRef) ([]string, error) {
	defer f.mu.Unlock()
	if err := f.call("lock ls", ref.String()); err != nil {
		return nil, err
	}
	i, err := f.image(ref)
	if err != nil || i.lockOwner == "" {
		return nil, err
	}
	return []string{i.lockOwner}, nil
}

func (f *fakeCeph) BreakLock(_ context.Context, _ creds, ref imageRef, owner string) error {
	defer f.mu.Unlock()
	if err := f.call("lock break", ref.String()); err != nil {
		return err
	}
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	if i.lockOwner != owner {
		return notFound(ref.String() + " lock of " + owner)
	}
	// librbd blocklists the owner it breaks (rbd_blocklist_on_break_lock)
	// for the monitors' default, an hour, in place of a longer entry.
	f.blocklisted[owner] = time.Hour
	i.watchers = slices.DeleteFunc(i.watchers, func(w string) bool { return w == owner })
	i.lockOwner = ""
	return nil
}

// openBy has the client addr open an image, as a node's mapping does; with
// owner it holds the exclusive lock too (it has written). A blocklisted
// client can do neither.
func (f *fakeCeph) openBy(ref imageRef, addr string, owner bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.image(ref)
	if err != nil {
		return err
	}
	if _, ok := f.blocklisted[addr]; ok {
		return &Error{Kind: KindOther, Msg: addr + ": (108) Cannot send after transport endpoint shutdown"}
	}
	i.watchers = append(i.watchers, addr)
	if owner {
		i.lockOwner = addr
	}
	return nil
}

// closeBy is the client addr closing an image: its watch and lock go.
func (f *fakeCeph) closeBy(ref imageRef, addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := f.images[ref.String()]; i != nil {
		i.watchers = slices.DeleteFunc(i.watchers, func(w string) bool { return w == addr })
		if i.lockOwner == addr {
			i.lockOwner = ""
		}
	}
}

func (f *fakeCeph) PoolAvailable(_ context.Context, _ creds, pool string) (int64, error) {
	defer f.mu.Unlock()
	if err := f.call("df", pool); err != nil {
		return 0, err
	}
	return 100 * backend.GiB, nil
}

func (f *fakeCeph) add(ref imageRef, size int64, parent *fakeSnap, parentImage *fakeImage) {
	f.nextID++
	f.images[ref.String()] = &fakeImage{id: fmt.Sprintf("id%d", f.nextID), pool: ref.pool, name: ref.image, size: size,
		meta: map[string]string{}, snaps: map[string]*fakeSnap{}, parent: parent, parentImage: parentImage}
}

func (f *fakeCeph) snap(ref snapRef) (*fakeImage, *fakeSnap) {
	i := f.images[ref.imageRef.String()]
	if i == nil || i.snaps[ref.snap] == nil {
		return nil, nil
	}
	return i, i.snaps[ref.snap]
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

// opsDone returns the operations called so far, in order.
func (f *fakeCeph) opsDone() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
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
