package cephfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

const testKey = "AQBvaBFZAAAAABAA9VHgwCgOsNTQ9hXlmOAKvQ=="

func testConfig(t *testing.T) Config {
	return Config{Monitors: "10.0.0.1:6789", User: "swarm-csi", Key: testKey, FsName: "cephfs",
		StateDir: filepath.Join(t.TempDir(), "cephfs"), CloneWait: 2 * time.Second}
}

func newTestBackend(t *testing.T, mod func(*Config)) (*Backend, *fakeCluster) {
	t.Helper()
	f := newFake()
	cfg := testConfig(t)
	if mod != nil {
		mod(&cfg)
	}
	b, err := newBackend(cfg, func(Config, string, string) (cluster, error) { return f, nil })
	if err != nil {
		t.Fatal(err)
	}
	return b, f
}

func spec(name string, size int64) backend.VolumeSpec {
	return backend.VolumeSpec{Name: name, CapacityBytes: size, AccessMode: "MULTI_NODE_MULTI_WRITER"}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := csierr.Code(err); got != want {
		t.Fatalf("error %v: code %v, want %v", err, got, want)
	}
}

func TestConfigCheck(t *testing.T) {
	for field, mod := range map[string]func(*Config){
		"monitors":      func(c *Config) { c.Monitors = "" },
		"user":          func(c *Config) { c.User = "client.admin" },
		"key":           func(c *Config) { c.Keyring = "/etc/ceph/keyring" },
		"fs-name":       func(c *Config) { c.FsName = "../x" },
		"group":         func(c *Config) { c.Group = "a/b" },
		"client":        func(c *Config) { c.Client = "nfs" },
		"default-quota": func(c *Config) { c.DefaultQuota = 1000 },
		"state-dir":     func(c *Config) { c.StateDir = "rel" },
	} {
		cfg := testConfig(t)
		mod(&cfg)
		_, err := newBackend(cfg, func(Config, string, string) (cluster, error) { return newFake(), nil })
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: error %v, want a ConfigError for it", field, err)
		}
	}
	b, _ := newTestBackend(t, nil)
	if b.cfg.Group != DefaultGroup || b.cfg.DefaultQuota != DefaultQuota || b.cfg.Client != ClientAuto {
		t.Errorf("defaults: %+v", b.cfg)
	}
	k, err := os.ReadFile(b.keyring)
	if err != nil || !strings.Contains(string(k), "[client.swarm-csi]") || !strings.Contains(string(k), testKey) {
		t.Errorf("keyring %q %v", k, err)
	}
	if st, err := os.Stat(b.keyring); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("keyring mode: %v %v", st.Mode(), err)
	}
	conf, _ := os.ReadFile(b.conf)
	if strings.Contains(string(conf), testKey) || !strings.Contains(string(conf), "mon host = 10.0.0.1:6789") {
		t.Errorf("ceph.conf:\n%s", conf)
	}
	// ceph-fuse creates none of its files and directories: a plugin's
	// rootfs has no /var/run or /var/log.
	for _, l := range []string{"admin socket =\n", "run dir =\n", "log file =\n"} {
		if !strings.Contains(string(conf), l) {
			t.Errorf("ceph.conf does not set %q:\n%s", l, conf)
		}
	}
}

func TestCreateIsIdempotentAndQuotaIsCapacity(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	s := spec("web", 64*backend.MiB)
	s.Root = &backend.RootDir{UID: 1000, GID: 1000, Mode: 0o770}
	v, err := b.CreateVolume(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	sv := f.subvolume(DefaultGroup, v.ID)
	if !ValidVolumeID(v.ID) || sv == nil || sv.quota != 64*backend.MiB || sv.root != (rootDir{1000, 1000, 0o770}) {
		t.Fatalf("volume %+v, subvolume %+v", v, sv)
	}
	again, err := b.CreateVolume(ctx, s)
	if err != nil || again.ID != v.ID || f.calls["Create"] != 1 {
		t.Fatalf("second create: %+v %v (%d creates)", again, err, f.calls["Create"])
	}
	got, err := b.Volume(ctx, v.ID)
	if err != nil || got.CapacityBytes != 64*backend.MiB || got.Name != "web" {
		t.Fatalf("Volume: %+v %v", got, err)
	}
	r, _ := b.readVolume(ctx, v.ID)
	if r.Path != "/volumes/swarm-csi/"+v.ID+"/uuid" {
		t.Errorf("path %q", r.Path)
	}
	if _, err := b.Volume(ctx, "vol-../../x"); !errors.Is(err, csierr.ErrNotFound) {
		t.Errorf("bad id: %v", err)
	}
	list, err := b.ListVolumes(ctx)
	if err != nil || len(list) != 1 || list[0].ID != v.ID {
		t.Errorf("ListVolumes: %v %v", list, err)
	}
}

func TestCreateResumesAfterAFailure(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	f.fail["Create"] = &Error{Op: "subvolume create", Kind: KindUnreachable, Err: errors.New("no monitor")}
	_, err := b.CreateVolume(ctx, spec("a", backend.GiB))
	wantCode(t, err, codes.Unavailable)
	// Half made: not a volume yet.
	if l, _ := b.ListVolumes(ctx); len(l) != 0 {
		t.Fatalf("a half-made volume is listed: %v", l)
	}
	delete(f.fail, "Create")
	v, err := b.CreateVolume(ctx, spec("a", backend.GiB))
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := b.ListVolumes(ctx); len(l) != 1 || l[0].ID != v.ID {
		t.Fatalf("after the retry: %v", l)
	}
}

func TestDeleteVolume(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	v, _ := b.CreateVolume(ctx, spec("a", backend.GiB))
	if err := b.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if f.subvolume(DefaultGroup, v.ID) != nil || len(f.records) != 0 {
		t.Fatalf("left behind: %v %v", f.subvolume(DefaultGroup, v.ID), f.records)
	}
	for _, id := range []string{v.ID, "vol-nothex", "../etc"} {
		if err := b.DeleteVolume(ctx, id); err != nil {
			t.Errorf("delete %q again: %v", id, err)
		}
	}
	// The name is free again, for a new subvolume.
	w, err := b.CreateVolume(ctx, spec("a", backend.GiB))
	if err != nil || w.ID == v.ID {
		t.Fatalf("recreate: %+v %v", w, err)
	}
}

func TestSnapshotsOutliveTheirVolume(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, func(c *Config) { c.CloneWait = time.Second })
	v, _ := b.CreateVolume(ctx, spec("a", 32*backend.MiB))
	sn, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: v.ID})
	if err != nil || !ValidSnapshotID(sn.ID) || sn.SizeBytes != 32*backend.MiB {
		t.Fatalf("snapshot %+v %v", sn, err)
	}
	again, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: v.ID})
	if err != nil || again.ID != sn.ID {
		t.Fatalf("again: %+v %v", again, err)
	}
	w, _ := b.CreateVolume(ctx, spec("b", backend.GiB))
	other, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s1", SourceVolumeID: w.ID})
	if err != nil || other.SourceVolumeID != v.ID {
		t.Fatalf("same name, other source: %+v %v (the caller compares)", other, err)
	}
	_, err = b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "s2", SourceVolumeID: "vol-00000000000000000000000000000000"})
	wantCode(t, err, codes.NotFound)

	if err := b.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("delete a volume with a snapshot: %v", err)
	}
	if _, err := b.Volume(ctx, v.ID); !errors.Is(err, csierr.ErrNotFound) {
		t.Fatalf("deleted volume: %v", err)
	}
	c, err := b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "c", CapacityBytes: 64 * backend.MiB, AccessMode: "SINGLE_NODE_WRITER",
		Source: &backend.Source{SnapshotID: sn.ID}})
	if err != nil {
		t.Fatalf("clone of a snapshot whose volume is gone: %v", err)
	}
	if q := f.subvolume(DefaultGroup, c.ID).quota; q != 64*backend.MiB {
		t.Errorf("clone quota %d", q)
	}
	list, _ := b.ListSnapshots(ctx)
	if len(list) != 1 {
		t.Errorf("ListSnapshots: %v", list)
	}
	if err := b.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if f.subvolume(DefaultGroup, v.ID) != nil {
		t.Errorf("the retained subvolume did not go with its last snapshot")
	}
	if err := b.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Errorf("delete again: %v", err)
	}
	if _, err := b.Snapshot(ctx, sn.ID); !errors.Is(err, csierr.ErrNotFound) {
		t.Errorf("deleted snapshot: %v", err)
	}
}

// A clone longer than the wait answers Aborted; the volume does not exist
// meanwhile, and a later call completes it.
func TestCloneInProgressAnswersAbortedThenCompletes(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, func(c *Config) { c.CloneWait = 50 * time.Millisecond })
	src, _ := b.CreateVolume(ctx, spec("src", 16*backend.MiB))
	f.cloneSteps = 1000
	cs := backend.VolumeSpec{Name: "copy", CapacityBytes: 32 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER",
		Source: &backend.Source{VolumeID: src.ID}}
	_, err := b.CreateVolumeFrom(ctx, cs)
	wantCode(t, err, codes.Aborted)
	l, _ := b.ListVolumes(ctx)
	if len(l) != 1 {
		t.Fatalf("a clone in progress is listed: %v", l)
	}
	id, _ := b.idFor(ctx, volumeNameKey("copy"), "vol-", ValidVolumeID)
	if _, err := b.Volume(ctx, id); !errors.Is(err, csierr.ErrNotFound) {
		t.Fatalf("Volume of a clone in progress: %v", err)
	}
	if snaps, _ := f.Snapshots(ctx, DefaultGroup, src.ID); len(snaps) != 1 {
		t.Fatalf("source snapshots while cloning: %v", snaps)
	}
	f.cloneSteps = 0
	v, err := b.CreateVolumeFrom(ctx, cs)
	if err != nil || v.ID != id || v.Source.VolumeID != src.ID {
		t.Fatalf("second call: %+v %v", v, err)
	}
	if q := f.subvolume(DefaultGroup, id).quota; q != 32*backend.MiB {
		t.Errorf("quota %d, want the volume's 32 MiB", q)
	}
	if snaps, _ := f.Snapshots(ctx, DefaultGroup, src.ID); len(snaps) != 0 {
		t.Errorf("the snapshot taken for the copy stays: %v", snaps)
	}
	if f.calls["Clone"] != 1 {
		t.Errorf("%d clones started", f.calls["Clone"])
	}
}

func TestFailedCloneStartsAgain(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	src, _ := b.CreateVolume(ctx, spec("src", 16*backend.MiB))
	f.failClone = true
	cs := backend.VolumeSpec{Name: "copy", CapacityBytes: 16 * backend.MiB, Source: &backend.Source{VolumeID: src.ID}}
	_, err := b.CreateVolumeFrom(ctx, cs)
	wantCode(t, err, codes.Aborted)
	id, _ := b.idFor(ctx, volumeNameKey("copy"), "vol-", ValidVolumeID)
	if f.subvolume(DefaultGroup, id) != nil {
		t.Fatal("a failed clone is left")
	}
	if snaps, _ := f.Snapshots(ctx, DefaultGroup, src.ID); len(snaps) != 0 {
		t.Fatalf("its snapshot is left: %v", snaps)
	}
	f.failClone = false
	if _, err := b.CreateVolumeFrom(ctx, cs); err != nil {
		t.Fatal(err)
	}
}

func TestDeleteCancelsACloneInProgress(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, func(c *Config) { c.CloneWait = 10 * time.Millisecond })
	src, _ := b.CreateVolume(ctx, spec("src", 16*backend.MiB))
	f.cloneSteps = 1000
	_, err := b.CreateVolumeFrom(ctx, backend.VolumeSpec{Name: "copy", CapacityBytes: 16 * backend.MiB, Source: &backend.Source{VolumeID: src.ID}})
	wantCode(t, err, codes.Aborted)
	id, _ := b.idFor(ctx, volumeNameKey("copy"), "vol-", ValidVolumeID)
	if err := b.DeleteVolume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if f.subvolume(DefaultGroup, id) != nil || len(f.subvolume(DefaultGroup, src.ID).snaps) != 0 {
		t.Fatal("cancelled clone or its snapshot left")
	}
	if err := b.DeleteVolume(ctx, src.ID); err != nil || f.subvolume(DefaultGroup, src.ID) != nil {
		t.Fatalf("source: %v", err)
	}
}

func TestExpandAndPublish(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	v, _ := b.CreateVolume(ctx, spec("a", 64*backend.MiB))
	size, err := b.ExpandVolume(ctx, v.ID, 128*backend.MiB)
	if err != nil || size != 128*backend.MiB || f.subvolume(DefaultGroup, v.ID).quota != size {
		t.Fatalf("expand: %d %v", size, err)
	}
	if size, _ := b.ExpandVolume(ctx, v.ID, 64*backend.MiB); size != 128*backend.MiB {
		t.Errorf("a smaller size shrank it to %d", size)
	}
	for _, n := range []string{"n1", "n2"} {
		if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: n}); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := b.Volume(ctx, v.ID)
	if len(got.Attachments) != 2 || got.CapacityBytes != 128*backend.MiB {
		t.Fatalf("after publish: %+v", got)
	}
	if err := b.Unpublish(ctx, v.ID, "n1"); err != nil {
		t.Fatal(err)
	}
	got, _ = b.Volume(ctx, v.ID)
	if len(got.Attachments) != 1 || got.Attachments[0].NodeID != "n2" {
		t.Fatalf("after unpublish: %+v", got.Attachments)
	}
}

func TestErrorsHaveTheirCodes(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	for kind, code := range map[Kind]codes.Code{
		KindUnreachable: codes.Unavailable, KindDenied: codes.PermissionDenied,
		KindNoSpace: codes.ResourceExhausted, KindOther: codes.Internal,
	} {
		f.fail["CreateGroup"] = &Error{Op: "x", Kind: kind, Err: errors.New("boom")}
		_, err := b.CreateVolume(ctx, spec("a", backend.GiB))
		if got := status.Code(csierr.Status(err)); got != code {
			t.Errorf("kind %d: %v, code %v want %v", kind, err, got, code)
		}
	}
}

// Through the controller: the five access modes for mount volumes, block
// refused, capacity as the quota with the documented default.
func TestControllerAccessModesAndQuota(t *testing.T) {
	ctx := context.Background()
	b, f := newTestBackend(t, nil)
	s := controller.New(b, 0)
	for i, m := range []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
	} {
		resp, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("v%d", i), VolumeCapabilities: []*csi.VolumeCapability{mountCap(m)}})
		if err != nil {
			t.Fatalf("%v: %v", m, err)
		}
		v := resp.GetVolume()
		if v.GetCapacityBytes() != DefaultQuota || f.subvolume(DefaultGroup, v.GetVolumeId()).quota != DefaultQuota {
			t.Errorf("%v: capacity %d, want the default quota", m, v.GetCapacityBytes())
		}
		if v.GetVolumeContext()["capacity"] == "not enforced" {
			t.Errorf("%v: the quota is said not to be enforced", m)
		}
	}
	resp, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "limited", CapacityRange: &csi.CapacityRange{LimitBytes: 64 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}})
	if err != nil || resp.GetVolume().GetCapacityBytes() != 64<<20 || f.subvolume(DefaultGroup, resp.GetVolume().GetVolumeId()).quota != 64<<20 {
		t.Fatalf("--limit-bytes 64M: %v %v", resp, err)
	}
	_, err = s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "blk", VolumeCapabilities: []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}})
	if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "block access is not supported") {
		t.Fatalf("block: %v", err)
	}
	_, err = s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "p", Parameters: map[string]string{"pool": "x"},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}})
	if csierr.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown parameter: %v", err)
	}
}

func mountCap(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: m}}
}

func TestKernelMonitors(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1,10.0.0.2:6789":                "10.0.0.1,10.0.0.2:6789",
		"[v2:127.0.0.1:3300,v1:127.0.0.1:6789]": "127.0.0.1:6789",
		"[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0] [v2:10.0.0.2:3300,v1:10.0.0.2:6789]": "10.0.0.1:6789,10.0.0.2:6789",
	} {
		if got := kernelMonitors(in); got != want {
			t.Errorf("kernelMonitors(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKeyOf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keyring")
	os.WriteFile(p, []byte("[client.other]\n\tkey = AAAA\n[client.swarm-csi]\n\tkey = "+testKey+"\n\tcaps mon = \"allow r\"\n"), 0o600)
	if k, err := keyOf(p, "swarm-csi"); err != nil || k != testKey {
		t.Errorf("keyOf: %q %v", k, err)
	}
	if _, err := keyOf(p, "nobody"); err == nil {
		t.Error("a missing user's key was found")
	}
}
