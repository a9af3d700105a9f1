//go:build ceph && cgo

package cephfs

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// The tests against a real cluster share one, started by the first of
// them and stopped by TestMain after every ceph-fuse of the tests (all
// under testRoot) is gone.
var (
	testRoot string
	shared   struct {
		once sync.Once
		c    *cephtest.Cluster
		err  error
	}
)

func TestMain(m *testing.M) {
	var err error
	if testRoot, err = os.MkdirTemp("", "cephfs-test-"); err != nil {
		panic(err)
	}
	code := m.Run()
	if shared.c != nil {
		if left := cephtest.KillFuse(testRoot); len(left) > 0 {
			println("ceph-fuse mounts left by the tests, killed:", strings.Join(left, " "))
			code = 1
		}
		if err := shared.c.Stop(); err != nil {
			println(err.Error())
		}
	}
	os.RemoveAll(testRoot)
	os.Exit(code)
}

func realCluster(t *testing.T) *cephtest.Cluster { return sharedCluster(t) }

func sharedCluster(t testing.TB) *cephtest.Cluster {
	t.Helper()
	testenv.Require(t, cephtest.MissingFS())
	shared.once.Do(func() {
		shared.c, shared.err = cephtest.StartFS(context.Background(), "")
		if shared.err == nil {
			t.Logf("cluster up in %v", shared.c.StartTime)
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// realBackend is the backend on the test cluster, as the limited user,
// in a group of the test's own.
func realBackend(t *testing.T, group string) *Backend {
	c := realCluster(t)
	dir, err := os.MkdirTemp(testRoot, "state-")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Monitors: c.MonHost, User: c.FSUser, Keyring: c.FSKeyring, FsName: c.FS,
		Group: group, StateDir: dir, Client: ClientFuse, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *Backend) subvolumes(t *testing.T) []string {
	l, err := b.cl.List(context.Background(), b.cfg.Group)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRealLifecycle(t *testing.T) {
	ctx := context.Background()
	b := realBackend(t, "life")
	timed := map[string][]time.Duration{}
	tm := func(op string, start time.Time) { timed[op] = append(timed[op], time.Since(start)) }

	start := time.Now()
	v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "a", CapacityBytes: 16 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER",
		Root: &backend.RootDir{UID: 1000, GID: 1000, Mode: 0o770}})
	tm("create", start)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.cl.Info(ctx, b.cfg.Group, v.ID)
	if err != nil || info.Quota != 16*backend.MiB || !strings.HasPrefix(info.Path, "/volumes/life/"+v.ID+"/") {
		t.Fatalf("info %+v %v", info, err)
	}
	again, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "a", CapacityBytes: 16 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil || again.ID != v.ID {
		t.Fatalf("again: %+v %v", again, err)
	}
	if size, err := b.ExpandVolume(ctx, v.ID, 32*backend.MiB); err != nil || size != 32*backend.MiB {
		t.Fatalf("expand: %d %v", size, err)
	}
	if info, _ := b.cl.Info(ctx, b.cfg.Group, v.ID); info.Quota != 32*backend.MiB {
		t.Fatalf("quota after expand %d", info.Quota)
	}
	start = time.Now()
	sn, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s", SourceVolumeID: v.ID})
	tm("snapshot", start)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	fromSnap, err := b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "from-snap", CapacityBytes: 64 * backend.MiB,
		AccessMode: "MULTI_NODE_MULTI_WRITER", Source: &backend.Source{SnapshotID: sn.ID}})
	for errors.Is(err, csierr.ErrAborted) { // as Swarm does
		fromSnap, err = b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "from-snap", CapacityBytes: 64 * backend.MiB,
			AccessMode: "MULTI_NODE_MULTI_WRITER", Source: &backend.Source{SnapshotID: sn.ID}})
	}
	tm("clone", start)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := b.cl.Info(ctx, b.cfg.Group, fromSnap.ID); info.Quota != 64*backend.MiB {
		t.Errorf("clone quota %d", info.Quota)
	}
	start = time.Now()
	fromVol, err := b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "from-vol", CapacityBytes: 32 * backend.MiB,
		AccessMode: "SINGLE_NODE_WRITER", Source: &backend.Source{VolumeID: v.ID}})
	for errors.Is(err, csierr.ErrAborted) {
		fromVol, err = b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "from-vol", CapacityBytes: 32 * backend.MiB,
			AccessMode: "SINGLE_NODE_WRITER", Source: &backend.Source{VolumeID: v.ID}})
	}
	tm("clone", start)
	if err != nil {
		t.Fatal(err)
	}
	if snaps, _ := b.cl.Snapshots(ctx, b.cfg.Group, v.ID); len(snaps) != 1 || snaps[0] != sn.ID {
		t.Errorf("source snapshots after the copy: %v", snaps)
	}
	list, err := b.ListVolumes(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("ListVolumes: %d %v", len(list), err)
	}
	if n, err := b.Capacity(ctx); err != nil || n <= 0 {
		t.Errorf("capacity %d %v", n, err)
	}
	if c := b.Condition(ctx, v); c.Abnormal {
		t.Errorf("condition %+v", c)
	}
	// The source goes first; its snapshot stays usable, then goes too.
	start = time.Now()
	if err := b.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	tm("delete", start)
	if err := b.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{fromSnap.ID, fromVol.ID} {
		start = time.Now()
		if err := b.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		tm("delete", start)
	}
	if l := b.subvolumes(t); len(l) != 0 {
		t.Errorf("subvolumes left: %v", l)
	}
	if keys, _ := b.cl.Keys(ctx, ""); len(keys) != 0 {
		t.Errorf("records left: %v", keys)
	}
	for op, ds := range timed {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		t.Logf("%s: %v", op, ds)
	}
}

// The node side: two nodes mount one subvolume and see each other's
// writes; the quota holds; a read-only mount refuses writes; a killed
// ceph-fuse is found, its session evicted and the volume mounted again;
// the unmount ends ceph-fuse.
func TestRealNodeMounts(t *testing.T) {
	ctx := context.Background()
	b := realBackend(t, "node")
	v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "shared", CapacityBytes: 8 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx, v.ID) })
	n1, err := b.ForNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	// One mount per volume and node, as the node service makes them.
	n2, _ := b.ForNode("n2")
	n3, _ := b.ForNode("n3")
	if err := n1.Register(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.NodeKnown(ctx, "n1"); !ok || err != nil {
		t.Fatalf("NodeKnown: %v %v", ok, err)
	}
	if err := n1.Health(ctx); err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp(testRoot, "mnt-")
	m1, m2, ro := filepath.Join(dir, "n1"), filepath.Join(dir, "n2"), filepath.Join(dir, "ro")
	for _, m := range []string{m1, m2, ro} {
		os.MkdirAll(m, 0o750)
	}
	t.Cleanup(func() {
		for _, m := range []string{m1, m2, ro} {
			_ = n1.Unmount(ctx, v.ID, m)
		}
	})
	start := time.Now()
	if err := n1.Mount(ctx, v, m1, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("mount %v", time.Since(start))
	if err := n1.Mount(ctx, v, m1, false); err != nil {
		t.Fatalf("mount again: %v", err)
	}
	if err := n2.Mount(ctx, v, m2, false); err != nil {
		t.Fatal(err)
	}
	if err := n3.Mount(ctx, v, ro, true); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m1, "from-n1"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(m2, "from-n1")); err != nil || string(b) != "1" {
		t.Fatalf("n2 reads %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write on the read-only mount: %v", err)
	}
	if err := writeFull(filepath.Join(m2, "big"), 16<<20); !errors.Is(err, unix.EDQUOT) {
		t.Errorf("write past the 8 MiB quota: %v, want EDQUOT", err)
	}
	os.Remove(filepath.Join(m2, "big"))

	// kill -9 n1's ceph-fuse.
	pids := fusePids(m1)
	if len(pids) != 1 {
		t.Fatalf("ceph-fuse of %s: %v", m1, pids)
	}
	unix.Kill(pids[0], unix.SIGKILL)
	waitGone(t, pids[0])
	if err := alive(m1); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("dead mount answers %v", err)
	}
	if err := n1.Check(ctx, v.ID); !errors.Is(err, csierr.ErrFailedPrecondition) {
		t.Fatalf("Check of a dead mount: %v", err)
	}
	start = time.Now()
	if err := n1.Mount(ctx, v, m1, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("recovery %v", time.Since(start))
	if b, err := os.ReadFile(filepath.Join(m1, "from-n1")); err != nil || string(b) != "1" {
		t.Fatalf("after recovery: %q %v", b, err)
	}
	if err := n1.Check(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if got := sessions(t, "n1."+v.ID); got != 1 {
		t.Errorf("%d sessions of n1's mount after recovery, want 1 (the dead one evicted)", got)
	}
	for _, m := range []string{m1, m2, ro} {
		start = time.Now()
		if err := n1.Unmount(ctx, v.ID, m); err != nil {
			t.Fatal(err)
		}
		t.Logf("unmount %v", time.Since(start))
		if p := fusePids(m); len(p) != 0 {
			t.Errorf("ceph-fuse of %s still runs: %v", m, p)
		}
		if _, ok, _ := mountAt(m); ok {
			t.Errorf("%s still mounted", m)
		}
	}
}

// writeFull writes n bytes from the start of path, a new file or an
// existing one, and fsyncs it.
func writeFull(path string, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < n; i += len(buf) {
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func waitGone(t *testing.T, pid int) {
	for i := 0; i < 100; i++ {
		if unix.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d still there", pid)
}

// sessions counts the MDS sessions whose mount id is id.
func sessions(t *testing.T, id string) int {
	out, err := shared.c.Admin(context.Background(), "ceph", "tell", "mds.a", "client", "ls", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ls []struct {
		Meta map[string]any `json:"client_metadata"`
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range ls {
		if s.Meta[mountKey] == id {
			n++
		}
	}
	return n
}
