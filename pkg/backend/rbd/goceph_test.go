//go:build ceph && cgo

package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// gocephEnv is a throwaway cluster and the in-process client of it, as
// New would make it.
type gocephEnv struct {
	cl    *cephtest.Cluster
	cfg   Config
	conf  string
	g     *goceph
	cr    creds // the driver's user: profile rbd on the pool
	admin creds
	pool  string
	ctx   context.Context
}

// startCluster starts a throwaway cluster, stopped when the test ends.
func startCluster(t *testing.T, ctx context.Context) *cephtest.Cluster {
	t.Helper()
	cl, err := cephtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	})
	return cl
}

// TestGoceph runs every operation of the in-process cluster against a real
// one, with its error kinds, then a monitor outage.
func TestGoceph(t *testing.T) {
	testenv.Require(t, cephtest.Missing())
	ctx := context.Background()
	cl := startCluster(t, ctx)
	t.Logf("cluster up in %v", cl.StartTime.Round(time.Millisecond))
	e := &gocephEnv{cl: cl, pool: cl.Pool, ctx: ctx,
		cr: creds{cl.User, cl.Keyring}, admin: creds{"admin", cl.AdminKeyring}}
	e.cfg = Config{Monitors: cl.MonHost, Pool: cl.Pool, User: cl.User, Keyring: cl.Keyring,
		Prefix: "gt", StateDir: t.TempDir(), CallTimeout: DefaultCallTimeout}
	e.conf = filepath.Join(e.cfg.StateDir, "ceph.conf")
	if err := os.WriteFile(e.conf, []byte(cephConf(e.cfg)), 0o600); err != nil {
		t.Fatal(err)
	}
	e.g = e.open(t)

	t.Run("Images", e.testImages)
	t.Run("SnapshotsClonesTrash", e.testSnapshots)
	t.Run("Metadata", e.testMetadata)
	t.Run("IndexRecreated", e.testIndexRecreated)
	t.Run("WatchersAndRemove", e.testWatchers)
	t.Run("Blocklist", e.testBlocklist)
	t.Run("ExclusiveLock", e.testLock)
	t.Run("PoolAvailable", e.testPoolAvailable)
	t.Run("Connections", e.testConnections)
	t.Run("Latency", e.testLatency)
	// Last: it stops the monitor.
	t.Run("MonitorOutage", e.testMonitorOutage)
}

// open is openCluster on the test cluster, closed at the test's end.
func (e *gocephEnv) open(t *testing.T) *goceph {
	t.Helper()
	c, err := openCluster(e.cfg, e.conf)
	if err != nil {
		t.Fatal(err)
	}
	g := c.(*goceph)
	t.Cleanup(g.Close)
	return g
}

// wantKind fails t unless err is an *Error of kind k that names cmd.
func wantKind(t *testing.T, err error, k Kind, cmd string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Kind != k {
		t.Fatalf("got %v (%#v), want kind %q", err, err, k)
	}
	if !strings.HasPrefix(e.Cmd, cmd) {
		t.Errorf("error %q names %q, want %q", err, e.Cmd, cmd)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *gocephEnv) ref(name string) imageRef { return imageRef{e.pool, "gt-" + name} }

// holder is another client of the cluster (client.admin), for what the
// driver must see others do: hold an image open, take its lock.
type holder struct {
	conn *rados.Conn
	io   *rados.IOContext
	img  *rbd.Image
}

func (e *gocephEnv) hold(t *testing.T, ref imageRef) *holder {
	t.Helper()
	c, err := rados.NewConnWithUser("admin")
	must(t, err)
	must(t, c.ReadConfigFile(e.cl.Conf))
	must(t, c.SetConfigOption("keyring", e.cl.AdminKeyring))
	must(t, c.Connect())
	h := &holder{conn: c}
	t.Cleanup(h.close)
	h.io, err = c.OpenIOContext(ref.pool)
	must(t, err)
	h.img, err = rbd.OpenImage(h.io, ref.image, rbd.NoSnapshot)
	must(t, err)
	return h
}

// close closes the image before the connection; a blocklisted client's
// close is bounded, and left behind if it hangs.
func (h *holder) close() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if h.img != nil {
			_ = h.img.Close()
			h.img = nil
		}
		if h.io != nil {
			h.io.Destroy()
			h.io = nil
		}
		h.conn.Shutdown()
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

func (h *holder) write(off int64) error {
	if _, err := h.img.WriteAt([]byte("swarm-csi"), off); err != nil {
		return err
	}
	return h.img.Flush()
}

func (e *gocephEnv) testImages(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	ref := e.ref("img")
	ok, exists := rbdCalls(t, "rbd create", "ok"), rbdCalls(t, "rbd create", "exists")
	must(t, g.Create(ctx, cr, ref, 64<<20, imageOptions{Features: "layering,exclusive-lock"}))
	wantKind(t, g.Create(ctx, cr, ref, 64<<20, imageOptions{}), KindExists, "rbd create "+ref.String())
	if rbdCalls(t, "rbd create", "ok") != ok+1 || rbdCalls(t, "rbd create", "exists") != exists+1 {
		t.Error("the calls are not counted in the metrics")
	}

	info, err := g.Info(ctx, cr, ref)
	must(t, err)
	if info.Name != ref.image || info.ID == "" || info.Size != 64<<20 || info.Parent != nil {
		t.Errorf("info %+v, want %s of 64 MiB with an id and no parent", info, ref.image)
	}
	must(t, g.Resize(ctx, cr, ref, 128<<20))
	if info, err = g.Info(ctx, cr, ref); err != nil || info.Size != 128<<20 {
		t.Errorf("after resize: %+v, %v; want 128 MiB", info, err)
	}
	must(t, g.Resize(ctx, cr, ref, 96<<20))
	if info, err = g.Info(ctx, cr, ref); err != nil || info.Size != 96<<20 {
		t.Errorf("after a shrink: %+v, %v; want 96 MiB", info, err)
	}

	missing := e.ref("missing")
	_, err = g.Info(ctx, cr, missing)
	wantKind(t, err, KindNotFound, "rbd info "+missing.String())
	wantKind(t, g.Resize(ctx, cr, missing, 1<<20), KindNotFound, "rbd resize")
	wantKind(t, g.Remove(ctx, cr, missing), KindNotFound, "rbd rm")
	wantKind(t, g.TrashMove(ctx, cr, missing), KindNotFound, "rbd trash mv")
	wantKind(t, g.Create(ctx, cr, imageRef{"nopool", "x"}, 1<<20, imageOptions{}), KindNotFound, "rbd create nopool/x")
	wantKind(t, g.Create(ctx, cr, e.ref("f"), 1<<20, imageOptions{Features: "layering,warp-drive"}), KindInvalid, "rbd create")
	wantKind(t, g.Create(ctx, cr, e.ref("f"), 1<<20, imageOptions{DataPool: "nopool"}), KindNotFound, "rbd create")
	// object-map needs exclusive-lock.
	wantKind(t, g.Create(ctx, cr, e.ref("f"), 1<<20, imageOptions{Features: "layering,object-map"}), KindInvalid, "rbd create")

	must(t, g.Remove(ctx, cr, ref))
	_, err = g.Info(ctx, cr, ref)
	wantKind(t, err, KindNotFound, "rbd info")

	// The user's capabilities: profile rbd on its pool only.
	_, err = e.cl.Admin(ctx, "ceph", "osd", "pool", "create", "other", "8")
	must(t, err)
	wantKind(t, g.Create(ctx, cr, imageRef{"other", "x"}, 1<<20, imageOptions{}), KindDenied, "rbd create other/x")
}

func (e *gocephEnv) testSnapshots(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	parent, clone := e.ref("parent"), e.ref("clone")
	snap := snapRef{parent, "s1"}
	must(t, g.Create(ctx, cr, parent, 32<<20, imageOptions{Features: "layering"}))
	must(t, g.SnapCreate(ctx, cr, snap))
	wantKind(t, g.SnapCreate(ctx, cr, snap), KindExists, "rbd snap create "+snap.String())
	wantKind(t, g.SnapCreate(ctx, cr, snapRef{e.ref("missing"), "s"}), KindNotFound, "rbd snap create")
	wantKind(t, g.SnapRemove(ctx, cr, snapRef{parent, "nosnap"}), KindNotFound, "rbd snap rm "+parent.String()+"@nosnap")

	snaps, err := g.Snapshots(ctx, cr, parent)
	must(t, err)
	if len(snaps) != 1 || snaps[0].Name != "s1" || snaps[0].Namespace != snapUser || snaps[0].Size != 32<<20 {
		t.Fatalf("snapshots %+v, want s1 (user, 32 MiB)", snaps)
	}
	wantKind(t, g.Remove(ctx, cr, parent), KindBusy, "rbd rm "+parent.String())

	// Clone v2: no protected snapshot.
	must(t, g.Clone(ctx, cr, snap, clone, imageOptions{Features: "layering"}))
	wantKind(t, g.Clone(ctx, cr, snap, clone, imageOptions{}), KindExists, "rbd clone")
	wantKind(t, g.Clone(ctx, cr, snapRef{parent, "nosnap"}, e.ref("c2"), imageOptions{}), KindNotFound, "rbd clone")
	info, err := g.Info(ctx, cr, clone)
	must(t, err)
	pinfo, err := g.Info(ctx, cr, parent)
	must(t, err)
	want := parentInfo{Pool: e.pool, Image: parent.image, ID: pinfo.ID, Snapshot: "s1"}
	if info.Parent == nil || *info.Parent != want {
		t.Fatalf("clone's parent %+v, want %+v", info.Parent, want)
	}

	// The snapshot goes to the trash namespace while the clone needs it.
	must(t, g.SnapRemove(ctx, cr, snap))
	snaps, err = g.Snapshots(ctx, cr, parent)
	must(t, err)
	if len(snaps) != 1 || snaps[0].Namespace != snapTrash {
		t.Fatalf("snapshots after snap rm %+v, want one in the trash namespace", snaps)
	}
	t.Logf("snapshot in the trash namespace: %+v", snaps[0])
	wantKind(t, g.SnapRemove(ctx, cr, snap), KindNotFound, "rbd snap rm")
	wantKind(t, g.Remove(ctx, cr, parent), KindBusy, "rbd rm")

	// The parent waits in the trash until the clone is gone.
	must(t, g.TrashMove(ctx, cr, parent))
	_, err = g.Info(ctx, cr, parent)
	wantKind(t, err, KindNotFound, "rbd info")
	trash, err := g.Trash(ctx, cr, e.pool)
	must(t, err)
	if len(trash) != 1 || trash[0].Name != parent.image || trash[0].ID != pinfo.ID {
		t.Fatalf("trash %+v, want %s (id %s)", trash, parent.image, pinfo.ID)
	}
	tinfo, err := g.TrashInfo(ctx, cr, e.pool, pinfo.ID)
	must(t, err)
	if tinfo.Name != parent.image || tinfo.ID != pinfo.ID || tinfo.Size != 32<<20 || tinfo.Parent != nil {
		t.Errorf("trash info %+v, want %s (id %s, 32 MiB, no parent)", tinfo, parent.image, pinfo.ID)
	}
	if info, err = g.Info(ctx, cr, clone); err != nil || info.Parent == nil || !info.Parent.Trash {
		t.Errorf("clone's parent %+v (%v): want it marked in the trash", info.Parent, err)
	}
	wantKind(t, g.TrashRemove(ctx, cr, e.pool, pinfo.ID), KindBusy, "rbd trash rm")
	if _, err := g.TrashInfo(ctx, cr, e.pool, pinfo.ID); err != nil {
		t.Errorf("after a refused trash rm: %v", err)
	}
	_, err = g.TrashInfo(ctx, cr, e.pool, "0123456789ab")
	wantKind(t, err, KindNotFound, "rbd trash info")

	must(t, g.Remove(ctx, cr, clone))
	must(t, g.TrashRemove(ctx, cr, e.pool, pinfo.ID))
	wantKind(t, g.TrashRemove(ctx, cr, e.pool, pinfo.ID), KindNotFound, "rbd trash rm")
	if trash, err = g.Trash(ctx, cr, e.pool); err != nil || len(trash) != 0 {
		t.Errorf("trash %+v, %v; want empty", trash, err)
	}
	_, err = g.Trash(ctx, cr, "nopool")
	wantKind(t, err, KindNotFound, "rbd trash ls nopool")
}

func (e *gocephEnv) testMetadata(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	for _, ref := range []imageRef{e.ref("meta"), e.g.index} {
		must(t, g.Create(ctx, cr, ref, 0, imageOptions{Features: "layering"}))
		_, err := g.MetaGet(ctx, cr, ref, "vol.a")
		wantKind(t, err, KindNotFound, "rbd image-meta get "+ref.String()+" vol.a")
		must(t, g.MetaSet(ctx, cr, ref, "vol.a", `{"a":1}`))
		must(t, g.MetaSet(ctx, cr, ref, "vol.b", "two words\nand a line"))
		if v, err := g.MetaGet(ctx, cr, ref, "vol.a"); err != nil || v != `{"a":1}` {
			t.Errorf("%s: get vol.a = %q, %v", ref, v, err)
		}
		must(t, g.MetaSet(ctx, cr, ref, "vol.a", "replaced"))
		out, err := e.cl.Admin(ctx, "rbd", "image-meta", "get", ref.String(), "vol.a")
		if err != nil || strings.TrimSuffix(string(out), "\n") != "replaced" {
			t.Errorf("%s: rbd image-meta get vol.a: %q, %v", ref, out, err)
		}
		m := metaMap(t, g, ctx, cr, ref)
		if len(m) != 2 || m["vol.a"] != "replaced" || m["vol.b"] != "two words\nand a line" {
			t.Errorf("%s: list %q", ref, m)
		}
		got, err := g.MetaGetKeys(ctx, cr, ref, []string{"vol.b", "vol.none", "vol.a"})
		if err != nil || len(got) != 2 || got["vol.a"] != "replaced" || got["vol.b"] != m["vol.b"] {
			t.Errorf("%s: get of three keys = %q, %v", ref, got, err)
		}
		must(t, g.MetaRemove(ctx, cr, ref, "vol.a"))
		if ref == e.g.index {
			must(t, g.MetaRemove(ctx, cr, ref, "vol.a")) // gone already: no error
		} else {
			wantKind(t, g.MetaRemove(ctx, cr, ref, "vol.a"), KindNotFound, "rbd image-meta remove")
		}
		if _, err := g.MetaGet(ctx, cr, ref, "vol.a"); !errors.Is(err, KindNotFound) {
			t.Errorf("%s: get of a removed key: %v", ref, err)
		}
	}
	missing := e.ref("missing")
	_, err := g.MetaGet(ctx, cr, missing, "k")
	wantKind(t, err, KindNotFound, "rbd image-meta get")
	_, _, err = g.MetaList(ctx, cr, missing, "", "", 0)
	wantKind(t, err, KindNotFound, "rbd image-meta list")
	_, err = g.MetaGetKeys(ctx, cr, missing, []string{"k"})
	wantKind(t, err, KindNotFound, "rbd image-meta get")
	wantKind(t, g.MetaSet(ctx, cr, missing, "k", "v"), KindNotFound, "rbd image-meta set")
	wantKind(t, g.MetaSetKeys(ctx, cr, missing, map[string]string{"k": "v"}), KindInvalid, "rbd image-meta set")

	// Options: rbd config image set.
	ref := e.ref("meta")
	must(t, g.SetOption(ctx, cr, ref, "rbd_qos_iops_limit", "100"))
	if v, err := g.MetaGet(ctx, cr, ref, "conf_rbd_qos_iops_limit"); err != nil || v != "100" {
		t.Errorf("option: %q, %v", v, err)
	}
	out, err := e.cl.Admin(ctx, "rbd", "config", "image", "get", ref.String(), "rbd_qos_iops_limit")
	if err != nil || strings.TrimSpace(string(out)) != "100" {
		t.Errorf("rbd config image get: %q, %v", out, err)
	}
	wantKind(t, g.SetOption(ctx, cr, ref, "rbd_qos_iops_limit", "many"), KindInvalid, "rbd config image set")
	wantKind(t, g.SetOption(ctx, cr, ref, "osd_pool_default_size", "3"), KindInvalid, "rbd config image set")
	must(t, g.Remove(ctx, cr, ref))
}

// testIndexRecreated: the index's header, which the connection
// remembers, is looked up again when the index is removed and made again.
func (e *gocephEnv) testIndexRecreated(t *testing.T) {
	g, ctx, cr, idx := e.g, e.ctx, e.cr, e.g.index
	must(t, g.MetaSet(ctx, cr, idx, "vol.x", "old"))
	if v, err := g.MetaGet(ctx, cr, idx, "vol.x"); err != nil || v != "old" {
		t.Fatalf("get: %q, %v", v, err)
	}
	// Records are read and written without opening the index: no
	// watcher, so it can go.
	if w, err := g.Watchers(ctx, cr, idx); err != nil || len(w) != 0 {
		t.Fatalf("index watchers %v, %v; want none", w, err)
	}
	must(t, g.Remove(ctx, cr, idx))
	_, err := g.MetaGet(ctx, cr, idx, "vol.x")
	wantKind(t, err, KindNotFound, "rbd image-meta get")
	_, _, err = g.MetaList(ctx, cr, idx, "", "", 0)
	wantKind(t, err, KindNotFound, "rbd image-meta list")
	wantKind(t, g.MetaSetKeys(ctx, cr, idx, map[string]string{"k": "v"}), KindNotFound, "rbd image-meta set")

	must(t, g.Create(ctx, cr, idx, 0, imageOptions{Features: "layering"}))
	must(t, g.MetaSet(ctx, cr, idx, "vol.x", "new"))
	if v, err := g.MetaGet(ctx, cr, idx, "vol.x"); err != nil || v != "new" {
		t.Errorf("get after the index was made again: %q, %v", v, err)
	}
	// Removed and made again behind the kept handle's back.
	_, err = e.cl.Admin(ctx, "rbd", "rm", "--no-progress", idx.String())
	must(t, err)
	_, err = e.cl.Admin(ctx, "rbd", "create", "--size", "0", idx.String())
	must(t, err)
	_, err = e.cl.Admin(ctx, "rbd", "image-meta", "set", idx.String(), "vol.y", "other")
	must(t, err)
	if m := metaMap(t, g, ctx, cr, idx); len(m) != 1 || m["vol.y"] != "other" {
		t.Errorf("list of the new index: %q", m)
	}

	// A listing larger than librbd's through go-ceph (256 KiB).
	h := e.hold(t, idx)
	value := strings.Repeat("r", 1000)
	for i := 0; i < 400; i++ {
		must(t, h.img.SetMetadata(fmt.Sprintf("vol.%04d", i), value))
	}
	h.close()
	m := metaMap(t, g, ctx, cr, idx)
	if len(m) != 401 || m["vol.0399"] != value || m["vol.y"] != "other" {
		t.Errorf("list of 401 records: %d keys", len(m))
	}
	// Pages: from a key on, so many, in order; a prefix alone.
	must(t, g.MetaSetKeys(ctx, cr, idx, map[string]string{"att.n1/a": "1", "att.n1/b": "2", "att.n10/a": "3"}))
	for _, c := range []struct {
		prefix, after string
		max           int
		first, last   string
		n             int
		more          bool
	}{
		{"vol.", "vol.0100", 50, "vol.0101", "vol.0150", 50, true},
		{"vol.", "vol.0390", 50, "vol.0391", "vol.y", 10, false},
		{"vol.", "vol.0390", 10, "vol.0391", "vol.y", 10, false},
		{"vol.", "vol.0390", 9, "vol.0391", "vol.0399", 9, true},
		{"vol.", "", 0, "vol.0000", "vol.y", 401, false},
		{"att.n1/", "", 0, "att.n1/a", "att.n1/b", 2, false},
		{"att.n1/", "att.n1/a", 5, "att.n1/b", "att.n1/b", 1, false},
	} {
		page, more, err := g.MetaList(ctx, cr, idx, c.prefix, c.after, c.max)
		if err != nil || len(page) != c.n || more != c.more || page[0].Key != c.first || page[len(page)-1].Key != c.last ||
			!slices.IsSortedFunc(page, func(a, b metaEntry) int { return strings.Compare(a.Key, b.Key) }) {
			t.Errorf("list %+v: %d keys, more %v, %v", c, len(page), more, err)
		}
	}
	if v, err := g.MetaGet(ctx, cr, idx, "vol.0200"); err != nil || v != value {
		t.Errorf("get vol.0200: %d bytes, %v", len(v), err)
	}
	must(t, g.Remove(ctx, cr, idx))
}

// metaMap lists all of an image's metadata.
func metaMap(t *testing.T, g *goceph, ctx context.Context, cr creds, ref imageRef) map[string]string {
	t.Helper()
	all, more, err := g.MetaList(ctx, cr, ref, "", "", 0)
	if err != nil || more {
		t.Fatalf("list %s: more %v, %v", ref, more, err)
	}
	m := map[string]string{}
	for _, e := range all {
		m[e.Key] = e.Value
	}
	return m
}

func (e *gocephEnv) testWatchers(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	ref := e.ref("watched")
	must(t, g.Create(ctx, cr, ref, 16<<20, imageOptions{Features: "layering"}))
	must(t, g.MetaSet(ctx, cr, ref, "k", "v"))
	if w, err := g.Watchers(ctx, cr, ref); err != nil || len(w) != 0 {
		t.Fatalf("watchers %v, %v; want none", w, err)
	}
	h := e.hold(t, ref)
	w, err := g.Watchers(ctx, cr, ref)
	must(t, err)
	if len(w) != 1 || !strings.Contains(w[0], "/") {
		t.Fatalf("watchers %q, want one address", w)
	}
	t.Logf("watcher: %s", w[0])
	wantKind(t, g.Remove(ctx, cr, ref), KindBusy, "rbd rm "+ref.String())
	if v, err := g.MetaGet(ctx, cr, ref, "k"); err != nil || v != "v" {
		t.Errorf("after a refused rm: %q, %v", v, err)
	}
	must(t, h.write(0))
	h.close()
	must(t, g.Remove(ctx, cr, ref))
	_, err = g.Watchers(ctx, cr, ref)
	wantKind(t, err, KindNotFound, "rbd status")
}

func (e *gocephEnv) testBlocklist(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	ref := e.ref("fenced")
	must(t, g.Create(ctx, cr, ref, 16<<20, imageOptions{Features: "layering"}))
	h := e.hold(t, ref)
	must(t, h.write(0))
	w, err := g.Watchers(ctx, cr, ref)
	must(t, err)
	if len(w) != 1 {
		t.Fatalf("watchers %q, want one", w)
	}
	wantKind(t, g.Blocklist(ctx, cr, "", time.Minute), KindInvalid, "ceph osd blocklist add")
	wantKind(t, g.Blocklist(ctx, cr, "not an address", time.Minute), KindInvalid, "ceph osd blocklist add")
	// profile rbd allows only addresses with a nonce.
	wantKind(t, g.Blocklist(ctx, cr, "127.0.0.1", time.Minute), KindDenied, "ceph osd blocklist add 127.0.0.1")
	must(t, g.Blocklist(ctx, cr, w[0], 10*time.Minute))
	out, err := e.cl.Admin(ctx, "ceph", "osd", "blocklist", "ls")
	must(t, err)
	if !strings.Contains(string(out), w[0]) {
		t.Errorf("blocklist %q lacks %s", out, w[0])
	}
	start := time.Now()
	err = h.write(4096)
	if err == nil {
		t.Fatal("a blocklisted client wrote")
	}
	t.Logf("the blocklisted client's write failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	h.close()
}

func (e *gocephEnv) testLock(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	ref := e.ref("locked")
	must(t, g.Create(ctx, cr, ref, 16<<20, imageOptions{Features: "layering,exclusive-lock"}))
	if o, err := g.LockOwners(ctx, cr, ref); err != nil || len(o) != 0 {
		t.Fatalf("owners %q, %v; want none", o, err)
	}
	h := e.hold(t, ref)
	must(t, h.img.LockAcquire(rbd.LockModeExclusive))
	must(t, h.write(0))
	owners, err := g.LockOwners(ctx, cr, ref)
	must(t, err)
	w, err := g.Watchers(ctx, cr, ref)
	must(t, err)
	t.Logf("lock owners %q, watchers %q", owners, w)
	if len(owners) != 1 || len(w) != 1 || owners[0] != w[0] {
		t.Fatalf("owners %q, watchers %q: want the holder in both", owners, w)
	}
	wantKind(t, g.Remove(ctx, cr, ref), KindBusy, "rbd rm")
	wantKind(t, g.BreakLock(ctx, cr, ref, "127.0.0.1:0/1"), KindBusy, "rbd lock break")
	must(t, g.BreakLock(ctx, cr, ref, owners[0]))
	if o, err := g.LockOwners(ctx, cr, ref); err != nil || len(o) != 0 {
		t.Errorf("owners after break %q, %v; want none", o, err)
	}
	// librbd blocklists the owner it breaks.
	if err := h.write(4096); err == nil {
		t.Error("the client whose lock was broken still writes")
	}
	h.close()

	plain := e.ref("plain")
	must(t, g.Create(ctx, cr, plain, 16<<20, imageOptions{Features: "layering"}))
	_, err = g.LockOwners(ctx, cr, plain)
	wantKind(t, err, KindInvalid, "rbd lock owners")
	_, err = g.LockOwners(ctx, cr, e.ref("missing"))
	wantKind(t, err, KindNotFound, "rbd lock owners")
}

func (e *gocephEnv) testPoolAvailable(t *testing.T) {
	// The manager reports a new pool's statistics after a while.
	start := time.Now()
	avail, err := e.g.PoolAvailable(e.ctx, e.cr, e.pool)
	for errors.Is(err, KindUnreachable) && time.Since(start) < time.Minute {
		time.Sleep(time.Second)
		avail, err = e.g.PoolAvailable(e.ctx, e.cr, e.pool)
	}
	must(t, err)
	if avail <= 0 || avail > 8<<30 {
		t.Errorf("available %d, want within the OSD's 8 GiB", avail)
	}
	t.Logf("pool %s: %d bytes available", e.pool, avail)
	_, err = e.g.PoolAvailable(e.ctx, e.cr, "nopool")
	wantKind(t, err, KindNotFound, "ceph df nopool")
}

func (e *gocephEnv) testConnections(t *testing.T) {
	ctx := e.ctx
	// Another user's key: its own connection.
	c := e.open(t)
	if _, err := c.PoolAvailable(ctx, e.admin, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PoolAvailable(ctx, e.cr, e.pool); err != nil {
		t.Fatal(err)
	}
	if n := len(c.conns); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	// librbd's wait for a lock owner is bounded as OSD operations are.
	kept, err := c.conns[e.cr].Get(ctx, func() (*conn, error) { return nil, errors.New("the connection is not kept") })
	must(t, err)
	r := kept.rados
	osd, err := r.GetConfigOption("rados_osd_op_timeout")
	must(t, err)
	if v, err := r.GetConfigOption("rbd_request_timed_out_seconds"); err != nil || v != osd || v == "0" {
		t.Errorf("rbd_request_timed_out_seconds %q, %v; want rados_osd_op_timeout, %s", v, err, osd)
	}

	// A key the monitors refuse.
	out, err := exec.Command("ceph-authtool", "--gen-print-key").Output()
	must(t, err)
	key := strings.TrimSpace(string(out))
	bad := filepath.Join(t.TempDir(), "bad.keyring")
	must(t, os.WriteFile(bad, []byte("[client.swarm-csi]\n\tkey = "+key+"\n"), 0o600))
	start := time.Now()
	_, err = c.Info(ctx, creds{e.cr.user, bad}, e.ref("x"))
	wantKind(t, err, KindAuth, "rbd info")
	t.Logf("refused key: %v after %v", err, time.Since(start).Round(time.Millisecond))
	// One librados cannot parse: it would print it.
	malformed := "AQBbYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmE="
	must(t, os.WriteFile(bad, []byte("[client.swarm-csi]\n\tkey = "+malformed+"\n"), 0o600))
	printed := stderrOf(t, func() { _, err = c.Info(ctx, creds{e.cr.user, bad}, e.ref("x")) })
	if err == nil {
		t.Fatal("a malformed key connected")
	}
	t.Logf("malformed key: %v; the libraries printed %q", err, printed)
	for _, s := range []string{err.Error(), printed} {
		if strings.Contains(s, key) || strings.Contains(s, malformed) {
			t.Errorf("a key is shown: %q", s)
		}
	}

	// A context that has ended runs nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Create(cctx, e.cr, e.ref("never"), 1<<20, imageOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	wantKind(t, c.Create(dctx, e.cr, e.ref("never"), 1<<20, imageOptions{}), KindTimeout, "rbd create")
	if _, err := c.Info(ctx, e.cr, e.ref("never")); !errors.Is(err, KindNotFound) {
		t.Errorf("an ended context created an image: %v", err)
	}

	// openCluster does not contact Ceph: a cluster nobody answers for.
	cfg := e.cfg
	cfg.Monitors, cfg.StateDir, cfg.CallTimeout = "127.0.0.1:9", t.TempDir(), 4*time.Second
	conf := filepath.Join(cfg.StateDir, "ceph.conf")
	must(t, os.WriteFile(conf, []byte(cephConf(cfg)), 0o600))
	start = time.Now()
	dead, err := openCluster(cfg, conf)
	must(t, err)
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("openCluster took %v", d)
	}
	defer dead.(*goceph).Close()
	// Three calls share one attempt, which is not kept: the next call
	// makes its own.
	for _, n := range []int{3, 1} {
		start = time.Now()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() { _, errs[i] = dead.Info(ctx, e.cr, e.ref(fmt.Sprint(i))) })
		}
		wg.Wait()
		d := time.Since(start)
		for i, err := range errs {
			wantKind(t, err, KindUnreachable, "rbd info "+e.ref(fmt.Sprint(i)).String())
		}
		t.Logf("no monitor: %d call(s) answered after %v: %v", n, d.Round(time.Millisecond), errs[0])
		if d > cfg.CallTimeout {
			t.Errorf("took %v, more than the call timeout %v", d, cfg.CallTimeout)
		}
	}
}

// testMonitorOutage stops the monitor under an established connection:
// calls fail within the timeouts, and work again once it is back.
func (e *gocephEnv) testMonitorOutage(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	ref := e.ref("outage")
	must(t, g.Create(ctx, cr, ref, 16<<20, imageOptions{Features: "layering"}))
	if _, err := g.PoolAvailable(ctx, cr, e.pool); err != nil {
		t.Fatal(err)
	}
	fresh := e.open(t) // never connected

	must(t, e.cl.StopMon())
	restarted := false
	defer func() {
		if !restarted {
			_ = e.cl.StartMon()
		}
	}()
	limit := e.cfg.CallTimeout
	check := func(name string, err error, d time.Duration, kinds ...Kind) {
		t.Helper()
		t.Logf("monitor down: %s answered after %v: %v", name, d.Round(time.Millisecond), err)
		if d > limit {
			t.Errorf("%s took %v, more than the call timeout %v", name, d, limit)
		}
		if kinds == nil {
			return
		}
		var ce *Error
		if !errors.As(err, &ce) || !slices.Contains(kinds, ce.Kind) {
			t.Errorf("%s: %v, want kind %v", name, err, kinds)
		}
	}
	start := time.Now()
	_, err := g.PoolAvailable(ctx, cr, e.pool)
	check("PoolAvailable", err, time.Since(start), KindTimeout, KindUnreachable)
	start = time.Now()
	err = g.Blocklist(ctx, cr, "127.0.0.1:0/1", time.Minute)
	check("Blocklist", err, time.Since(start), KindTimeout, KindUnreachable)
	// Calls wait together for one attempt to connect, each no longer
	// than its context allows.
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = fresh.Info(short, cr, ref) })
	}
	wg.Wait()
	d := time.Since(start)
	t.Logf("monitor down: 4 calls with 2 s to connect answered after %v: %v", d.Round(time.Millisecond), errs[0])
	for _, err := range errs {
		wantKind(t, err, KindTimeout, "rbd info")
	}
	if d > 3*time.Second {
		t.Errorf("4 calls with 2 s took %v", d)
	}
	start = time.Now()
	_, err = fresh.Info(ctx, cr, ref)
	check("Info on a new connection", err, time.Since(start), KindUnreachable)
	// The OSD still serves image operations it has the maps for.
	start = time.Now()
	_, err = g.Info(ctx, cr, ref)
	check("Info on the established connection", err, time.Since(start))

	must(t, e.cl.StartMon())
	restarted = true
	start = time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		_, err = g.PoolAvailable(ctx, cr, e.pool)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	must(t, err)
	t.Logf("monitor back: PoolAvailable answers %v after its start", time.Since(start).Round(time.Millisecond))
	if _, err := fresh.Info(ctx, cr, ref); err != nil {
		t.Errorf("the connection that failed is not tried again: %v", err)
	}
	must(t, g.Remove(ctx, cr, ref))
}

// testLatency measures each operation on the throwaway cluster.
func (e *gocephEnv) testLatency(t *testing.T) {
	g, ctx, cr := e.g, e.ctx, e.cr
	times := map[string][]time.Duration{}
	timed := func(op string, f func() error) {
		t.Helper()
		start := time.Now()
		err := f()
		times[op] = append(times[op], time.Since(start))
		must(t, err)
	}
	idx := g.index
	if err := g.Create(ctx, cr, idx, 0, imageOptions{Features: "layering"}); err != nil && !errors.Is(err, KindExists) {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		vol, clone := e.ref(fmt.Sprintf("lat%d", i)), e.ref(fmt.Sprintf("latc%d", i))
		snap := snapRef{vol, "s"}
		timed("create", func() error { return g.Create(ctx, cr, vol, 1<<30, imageOptions{Features: "layering,exclusive-lock"}) })
		timed("image-meta set (index)", func() error { return g.MetaSet(ctx, cr, idx, "vol.lat", "x") })
		timed("image-meta get (index)", func() error { _, err := g.MetaGet(ctx, cr, idx, "vol.lat"); return err })
		timed("image-meta list (index)", func() error { _, _, err := g.MetaList(ctx, cr, idx, "", "", 0); return err })
		timed("image-meta set (volume)", func() error { return g.MetaSet(ctx, cr, vol, "k", "v") })
		timed("image-meta get (volume, open+close)", func() error { _, err := g.MetaGet(ctx, cr, vol, "k"); return err })
		timed("info", func() error { _, err := g.Info(ctx, cr, vol); return err })
		timed("resize", func() error { return g.Resize(ctx, cr, vol, 2<<30) })
		timed("config image set", func() error { return g.SetOption(ctx, cr, vol, "rbd_qos_bps_limit", "0") })
		timed("status (watchers)", func() error { _, err := g.Watchers(ctx, cr, vol); return err })
		timed("lock owners", func() error { _, err := g.LockOwners(ctx, cr, vol); return err })
		timed("snap create", func() error { return g.SnapCreate(ctx, cr, snap) })
		timed("snap ls", func() error { _, err := g.Snapshots(ctx, cr, vol); return err })
		timed("clone", func() error { return g.Clone(ctx, cr, snap, clone, imageOptions{}) })
		timed("snap rm (to the trash namespace)", func() error { return g.SnapRemove(ctx, cr, snap) })
		timed("trash mv", func() error { return g.TrashMove(ctx, cr, vol) })
		timed("trash ls", func() error { _, err := g.Trash(ctx, cr, e.pool); return err })
		info, err := g.Info(ctx, cr, clone)
		must(t, err)
		timed("trash info", func() error { _, err := g.TrashInfo(ctx, cr, e.pool, info.Parent.ID); return err })
		timed("rm (clone)", func() error { return g.Remove(ctx, cr, clone) })
		timed("trash rm", func() error { return g.TrashRemove(ctx, cr, e.pool, info.Parent.ID) })
		timed("df", func() error { _, err := g.PoolAvailable(ctx, cr, e.pool); return err })
	}
	// The same through the rbd tool, as the driver ran it before.
	for i := 0; i < 10; i++ {
		vol := e.ref(fmt.Sprintf("cli%d", i))
		cli := func(op string, args ...string) {
			timed("(cli) "+op, func() error { _, err := e.cl.Admin(ctx, "rbd", args...); return err })
		}
		cli("create", "create", "--size", "1024", "--image-feature", "layering,exclusive-lock", vol.String())
		cli("image-meta set", "image-meta", "set", vol.String(), "k", "v")
		cli("image-meta get", "image-meta", "get", vol.String(), "k")
		cli("info", "info", "--format", "json", vol.String())
		cli("resize", "resize", "--no-progress", "--size", "2048", vol.String())
		cli("status", "status", "--format", "json", vol.String())
		cli("snap create", "snap", "create", "--no-progress", vol.String()+"@s")
		cli("snap rm", "snap", "rm", "--no-progress", vol.String()+"@s")
		cli("rm", "rm", "--no-progress", vol.String())
	}
	ops := make([]string, 0, len(times))
	for op := range times {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	var b strings.Builder
	for _, op := range ops {
		d := times[op]
		slices.Sort(d)
		fmt.Fprintf(&b, "\n  %-40s p50 %7.2f ms  max %7.2f ms", op, ms(d[len(d)/2]), ms(d[len(d)-1]))
	}
	t.Logf("in-process operations, %d runs each:%s", len(times["create"]), b.String())
}

// rbdCalls is how many rbd calls named call ended with status.
func rbdCalls(t *testing.T, call, status string) uint64 {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	must(t, err)
	for _, f := range fams {
		if f.GetName() != "swarm_csi_backend_call_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["backend"] == "rbd" && labels["call"] == call && labels["status"] == status {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// stderrOf returns what f (the C libraries) wrote to file descriptor 2.
func stderrOf(t *testing.T, f func()) string {
	t.Helper()
	tmp, err := os.CreateTemp(t.TempDir(), "stderr")
	must(t, err)
	defer tmp.Close()
	saved, err := unix.Dup(2)
	must(t, err)
	must(t, unix.Dup2(int(tmp.Fd()), 2))
	f()
	must(t, unix.Dup2(saved, 2))
	_ = unix.Close(saved)
	b, err := os.ReadFile(tmp.Name())
	must(t, err)
	return string(b)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
