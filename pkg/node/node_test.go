package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

const volID = "vol-00000000000000000000000000000001"

func mountVolume() *backend.Volume {
	return &backend.Volume{ID: volID, VolumeSpec: backend.VolumeSpec{Name: "db", CapacityBytes: 1 << 30, FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER"}}
}

func blockVolume() *backend.Volume {
	return &backend.Volume{ID: volID, VolumeSpec: backend.VolumeSpec{Name: "raw", CapacityBytes: 1 << 30, Block: true, AccessMode: "SINGLE_NODE_WRITER"}}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

type harness struct {
	t       *testing.T
	srv     *Server
	be      *fakeBackend
	m       *fakeMounter
	root    string
	staging string // Swarm's /data/staged/<id>, parents missing
	target  string // Swarm's /data/published/<id>, parents missing
}

func newHarness(t *testing.T, v *backend.Volume) *harness {
	t.Helper()
	root := t.TempDir()
	be, m := newFakeBackend(v), newFakeMounter()
	srv, err := New(context.Background(), be, m, Config{NodeID: "node-a", MaxVolumesPerNode: 8, StateDir: filepath.Join(root, "state")})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, srv: srv, be: be, m: m, root: root,
		staging: filepath.Join(root, "data/staged/swarm-vol-1"),
		target:  filepath.Join(root, "data/published/swarm-vol-1")}
}

func (h *harness) stage(c *csi.VolumeCapability, pc map[string]string) error {
	_, err := h.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: volID, StagingTargetPath: h.staging, VolumeCapability: c, PublishContext: pc})
	return err
}

func (h *harness) publish(c *csi.VolumeCapability, target string, readonly bool) error {
	_, err := h.srv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: volID, StagingTargetPath: h.staging, TargetPath: target, VolumeCapability: c, Readonly: readonly})
	return err
}

func (h *harness) unpublish(target string) error {
	_, err := h.srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
	return err
}

func (h *harness) unstage() error {
	_, err := h.srv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: h.staging})
	return err
}

func (h *harness) must(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if got := csierr.Code(err); got != code {
		t.Fatalf("got %v (%v), want %v", got, err, code)
	}
}

// Swarm does not create the parents of /data/staged/<id> and
// /data/published/<id> (docs/swarm.md, "Staging and target paths"): the
// node must.
func TestStageAndPublishCreateMissingParents(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	for _, p := range []string{h.staging, h.target} {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			t.Fatalf("%s was not created as a directory: %v", p, err)
		}
	}
	if mt, ok := h.m.mounted(h.target); !ok || mt.source != h.staging {
		t.Fatalf("target is not a bind mount of the staging path: %+v", mt)
	}
}

// Swarm never sends NodeUnstageVolume (SwarmKit PR #3178): the last
// unpublish must release the staging mount and the device, and a late
// NodeUnstageVolume must still succeed as a no-op.
func TestLastUnpublishReleasesVolume(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	second := filepath.Join(h.root, "data/published/second")
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	h.must(h.publish(c, second, false))

	h.must(h.unpublish(h.target))
	if _, ok := h.m.mounted(h.staging); !ok || !h.be.isAttached(volID) {
		t.Fatal("the volume was released while still published at a second target")
	}
	if _, err := os.Stat(h.target); !os.IsNotExist(err) {
		t.Fatalf("unpublished target still exists: %v", err)
	}

	h.must(h.unpublish(second))
	if _, ok := h.m.mounted(h.staging); ok {
		t.Fatal("staging path still mounted after the last unpublish")
	}
	if h.be.isAttached(volID) {
		t.Fatal("device still attached after the last unpublish")
	}
	h.must(h.unstage()) // late unstage: no-op
	h.must(h.unstage())
	h.must(h.unpublish(h.target)) // repeated unpublish: no-op
}

// After a manager leader change the node may get no publish context
// (SwarmKit #3276): the volume is found from its id alone.
func TestStageWithoutPublishContext(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, map[string]string{}))
	h.must(h.publish(c, h.target, false))
	if !h.be.isAttached(volID) {
		t.Fatal("not attached")
	}
	if _, ok := h.m.mounted(h.staging); !ok {
		t.Fatal("not staged")
	}
	if h.m.formats != 1 {
		t.Fatalf("formatted %d times, want once", h.m.formats)
	}
}

// A CO may publish again after the last unpublish released the volume,
// without staging first: the node stages it again.
func TestPublishAfterReleaseRestages(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	h.must(h.unpublish(h.target))
	h.must(h.publish(c, h.target, false))
	if _, ok := h.m.mounted(h.staging); !ok || !h.be.isAttached(volID) {
		t.Fatal("publish after release did not stage the volume again")
	}
	if mt, ok := h.m.mounted(h.target); !ok || mt.source != h.staging {
		t.Fatal("target not mounted")
	}
}

// A volume still staged is published without staging it again; one whose
// staging mount or device is gone (a reboot) is staged again first.
func TestPublishStagesOnlyWhatIsNotStaged(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    *backend.Volume
		c    *csi.VolumeCapability
	}{
		{"mount", mountVolume(), mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		{"block", blockVolume(), blockCap()},
	} {
		h := newHarness(t, tc.v)
		h.must(h.stage(tc.c, nil))
		h.must(h.publish(tc.c, h.target, false))
		if n := len(h.be.attachPC); n != 1 {
			t.Fatalf("%s: attached %d times for a stage and a publish, want once", tc.name, n)
		}
		// What a reboot takes away.
		h.must(h.m.Unmount(h.staging))
		h.must(h.m.Unmount(h.target))
		h.must(h.be.Detach(context.Background(), volID))
		second := filepath.Join(h.root, "second")
		h.must(h.publish(tc.c, second, false))
		if n := len(h.be.attachPC); n != 2 || !h.be.isAttached(volID) {
			t.Fatalf("%s: attached %d times, device there %v; want the publish to attach again", tc.name, n, h.be.isAttached(volID))
		}
		if _, ok := h.m.mounted(h.staging); ok == tc.v.Block {
			t.Fatalf("%s: staging path mounted %v after the publish", tc.name, ok)
		}
		if _, ok := h.m.mounted(second); !ok {
			t.Fatalf("%s: target not mounted", tc.name)
		}
	}
}

// A volume the backend knows was never written is formatted without a
// probe and not checked for growth; once written, staging it again probes
// and keeps its filesystem. Read-only, it is never formatted.
func TestStageFormatsBlankVolumeWithoutProbe(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.be.blank[volID] = true
	h.m.needGrow = true // a check would grow it
	h.must(h.stage(c, nil))
	if h.m.blankOnes != 1 || h.m.formats != 1 || h.m.resizes != 0 {
		t.Fatalf("formats %d (%d without a probe), resizes %d; want one format without a probe and no resize", h.m.formats, h.m.blankOnes, h.m.resizes)
	}
	h.m.needGrow = false
	h.be.blank[volID] = false
	h.must(h.unstage())
	h.must(h.stage(c, nil))
	if h.m.blankOnes != 1 || h.m.formats != 1 {
		t.Fatalf("restage: formats %d (%d without a probe), want the first one only", h.m.formats, h.m.blankOnes)
	}
	h.must(h.unstage())

	// Read-only, the probe decides (and refuses a blank device).
	ro := newHarness(t, mountVolume())
	ro.be.blank[volID] = true
	_ = ro.stage(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), nil)
	if ro.m.blankOnes != 0 {
		t.Fatal("a read-only stage formatted the volume")
	}
}

func TestStageIsIdempotentAndGrowsWhenNeeded(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.m.needGrow = true // the volume was expanded since
	h.must(h.stage(c, nil))
	if h.m.formats != 1 {
		t.Fatalf("formatted %d times, want once", h.m.formats)
	}
	if h.m.resizes != 1 {
		t.Fatalf("resized %d times, want once", h.m.resizes)
	}
	other := filepath.Join(h.root, "elsewhere")
	_, err := h.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: other, VolumeCapability: c})
	wantCode(t, err, codes.AlreadyExists)
}

func TestPublishReadOnlyAndMountFlags(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().MountFlags = []string{"noatime"}
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, true))
	mt, _ := h.m.mounted(h.target)
	if !slices.Contains(mt.options, "ro") || !slices.Contains(mt.options, "noatime") {
		t.Fatalf("bind mount options %v: want ro and noatime", mt.options)
	}
}

// A volume's mountOptions apply at stage after the capability's flags,
// and xfs gets nouuid besides.
func TestStageMountOptions(t *testing.T) {
	v := mountVolume()
	v.FsType, v.MountOptions = "xfs", "noatime,logbsize=256k"
	h := newHarness(t, v)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().MountFlags = []string{"lazytime"}
	h.must(h.stage(c, nil))
	mt, _ := h.m.mounted(h.staging)
	if want := []string{"lazytime", "noatime", "logbsize=256k", "nouuid"}; !slices.Equal(mt.options, want) {
		t.Fatalf("stage mount options %v, want %v", mt.options, want)
	}

	bad := mountVolume()
	bad.MountOptions = "noatime;reboot" // a record changed by hand
	h = newHarness(t, bad)
	err := h.stage(mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), nil)
	wantCode(t, err, codes.InvalidArgument)
	if _, ok := h.m.mounted(h.staging); ok {
		t.Fatal("mounted with options that do not validate")
	}
}

func TestBlockPublishesDevice(t *testing.T) {
	h := newHarness(t, blockVolume())
	h.must(h.stage(blockCap(), nil))
	if _, ok := h.m.mounted(h.staging); ok {
		t.Fatal("a block volume must not be mounted at the staging path")
	}
	h.must(h.publish(blockCap(), h.target, false))
	fi, err := os.Stat(h.target)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("block target must be a file: %v", err)
	}
	dev, _ := h.be.Device(context.Background(), volID)
	if mt, _ := h.m.mounted(h.target); mt.source != dev {
		t.Fatalf("block target bound to %q, want device %q", mt.source, dev)
	}
	h.must(h.unpublish(h.target))
	if h.be.isAttached(volID) {
		t.Fatal("device still attached after the last unpublish")
	}
}

func TestSingleNodeSingleWriterRefusesSecondTarget(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	h.must(h.publish(c, h.target, false)) // idempotent
	wantCode(t, h.publish(c, filepath.Join(h.root, "other"), false), codes.FailedPrecondition)
}

func TestUnstageRefusesWhilePublished(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	wantCode(t, h.unstage(), codes.FailedPrecondition)
}

func TestAccessTypeMustMatchVolume(t *testing.T) {
	h := newHarness(t, mountVolume())
	wantCode(t, h.stage(blockCap(), nil), codes.InvalidArgument)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().FsType = "xfs"
	wantCode(t, h.stage(c, nil), codes.InvalidArgument)
}

func TestRequestValidation(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"stage without id", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{StagingTargetPath: h.staging, VolumeCapability: c})
			return err
		}, codes.InvalidArgument},
		{"stage relative path", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: "data/staged", VolumeCapability: c})
			return err
		}, codes.InvalidArgument},
		{"stage path with ..", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: h.root + "/../etc", VolumeCapability: c})
			return err
		}, codes.InvalidArgument},
		{"stage root", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: "/", VolumeCapability: c})
			return err
		}, codes.InvalidArgument},
		{"stage without capability", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: h.staging})
			return err
		}, codes.InvalidArgument},
		{"stage unknown volume", func() error {
			_, err := h.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-nope", StagingTargetPath: h.staging, VolumeCapability: c})
			return err
		}, codes.NotFound},
		{"stage multi-node multi-writer mount", func() error {
			return h.stage(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), nil)
		}, codes.InvalidArgument},
		{"publish without staging path", func() error {
			_, err := h.srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, TargetPath: h.target, VolumeCapability: c})
			return err
		}, codes.InvalidArgument},
		{"unpublish without target", func() error {
			_, err := h.srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID})
			return err
		}, codes.InvalidArgument},
		{"stats of unknown volume", func() error {
			_, err := h.srv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol-nope", VolumePath: h.target})
			return err
		}, codes.NotFound},
		{"stats where nothing is mounted", func() error {
			_, err := h.srv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: h.root})
			return err
		}, codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.code) })
	}
}

// A second operation on a volume while one is in progress fails at once.
func TestConcurrentOperationIsAborted(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	entered, unblock := make(chan struct{}), make(chan struct{})
	h.be.attachFn = func(*backend.Volume) error {
		close(entered)
		<-unblock
		return nil
	}
	done := make(chan error)
	go func() { done <- h.stage(c, nil) }()
	<-entered
	wantCode(t, h.publish(c, h.target, false), codes.Aborted)
	close(unblock)
	h.must(<-done)
}

// The node's state survives a restart: a new server on the same state
// directory still releases the volume at its last unpublish.
func TestStateSurvivesRestart(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	restarted, err := New(context.Background(), h.be, h.m, h.srv.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = restarted
	h.must(h.unpublish(h.target))
	if _, ok := h.m.mounted(h.staging); ok || h.be.isAttached(volID) {
		t.Fatal("a restarted node did not release the volume at its last unpublish")
	}
}

func TestVolumeHealth(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	ctx := context.Background()
	resp, err := h.srv.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: volID, VolumePublishPath: h.target, StagingTargetPath: h.staging})
	h.must(err)
	if n := len(resp.GetVolumeHealth().GetHealthStatuses()); n != 0 {
		t.Fatalf("healthy volume reported %d problems", n)
	}
	// The mount disappears behind the driver's back.
	h.must(h.m.Unmount(h.target))
	resp, err = h.srv.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: volID, VolumePublishPath: h.target})
	h.must(err)
	st := resp.GetVolumeHealth().GetHealthStatuses()
	if len(st) != 1 || st[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || st[0].GetReason() != "NotMounted" {
		t.Fatalf("health after losing the mount: %v", st)
	}
	_, err = h.srv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: h.target})
	wantCode(t, err, codes.NotFound)
}

// The metrics' view of the volumes published here: sizes while healthy,
// the reason once a mount or the device is gone.
func TestVolumeUsage(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	ctx := context.Background()
	h.must(h.stage(c, nil))
	if us, err := h.srv.VolumeUsage(ctx); err != nil || len(us) != 0 {
		t.Fatalf("staged, not published: %+v, %v", us, err)
	}
	h.must(h.publish(c, h.target, false))
	us, err := h.srv.VolumeUsage(ctx)
	if err != nil || len(us) != 1 || us[0].VolumeID != volID || us[0].Abnormal != "" || us[0].CapacityBytes <= 0 || us[0].Inodes <= 0 {
		t.Fatalf("published: %+v, %v", us, err)
	}
	h.must(h.m.Unmount(h.target))
	if us, _ = h.srv.VolumeUsage(ctx); len(us) != 1 || us[0].Abnormal != "NotMounted" || us[0].CapacityBytes != 0 {
		t.Fatalf("the published mount gone: %+v", us)
	}
	h.must(h.m.BindMount(h.staging, h.target, nil))
	h.must(h.be.Detach(ctx, volID))
	if us, _ = h.srv.VolumeUsage(ctx); len(us) != 1 || us[0].Abnormal != "DeviceDetached" {
		t.Fatalf("the device gone: %+v", us)
	}
}

func TestNodeGetInfo(t *testing.T) {
	h := newHarness(t, mountVolume())
	info, err := h.srv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	h.must(err)
	if info.GetNodeId() != "node-a" || info.GetMaxVolumesPerNode() != 8 {
		t.Fatalf("NodeGetInfo = %v", info)
	}
}

// Unpublishing a path the volume was never published at releases nothing.
func TestUnpublishOfUnknownTargetKeepsStage(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.must(h.unpublish(filepath.Join(h.root, "never-published")))
	if _, ok := h.m.mounted(h.staging); !ok || !h.be.isAttached(volID) {
		t.Fatal("an unpublish of a path never published released the staged volume")
	}
}

// Docker unmounts a managed plugin's mounts when it is disabled, while
// Swarm keeps the volume published: the restarted node makes them again,
// with the options they had.
func TestRestoreRemountsLostMounts(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	c.GetMount().MountFlags = []string{"noatime"}
	second := filepath.Join(h.root, "data/published/second")
	h.must(h.stage(c, nil))
	h.must(h.publish(c, h.target, false))
	h.must(h.publish(c, second, true))

	h.m.mu.Lock()
	h.m.mounts = map[string]fakeMount{} // the plugin was disabled
	h.m.mu.Unlock()
	restarted, err := New(context.Background(), h.be, h.m, h.srv.cfg)
	h.must(err)
	h.must(restarted.Restore(context.Background()))

	if mt, ok := h.m.mounted(h.staging); !ok || !slices.Contains(mt.options, "noatime") {
		t.Fatalf("staging path not remounted with its flags: %+v", mt)
	}
	if mt, ok := h.m.mounted(h.target); !ok || mt.source != h.staging || slices.Contains(mt.options, "ro") {
		t.Fatalf("target not remounted read-write from staging: %+v", mt)
	}
	if mt, ok := h.m.mounted(second); !ok || !slices.Contains(mt.options, "ro") {
		t.Fatalf("read-only target not remounted read-only: %+v", mt)
	}
	if h.m.formats != 1 {
		t.Fatalf("formatted %d times, want once", h.m.formats)
	}
	// Restoring again changes nothing.
	h.must(restarted.Restore(context.Background()))
	if len(h.m.mounts) != 3 {
		t.Fatalf("%d mounts after a second restore, want 3", len(h.m.mounts))
	}
}

// Volumes are restored several at a time: each waits mostly on the tools
// that check and mount it.
func TestRestoreRunsVolumesAtOnce(t *testing.T) {
	h := newHarness(t, mountVolume())
	second := mountVolume()
	second.ID = "vol-2"
	h.be.volumes[second.ID] = second
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	_, err := h.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: second.ID, StagingTargetPath: filepath.Join(h.root, "data/staged/swarm-vol-2"), VolumeCapability: c})
	h.must(err)

	h.m.mu.Lock()
	h.m.mounts = map[string]fakeMount{} // the plugin was disabled
	h.m.mu.Unlock()
	// Each attach waits for the other to have begun.
	var arrived sync.WaitGroup
	arrived.Add(2)
	h.be.attachFn = func(*backend.Volume) error {
		arrived.Done()
		done := make(chan struct{})
		go func() { arrived.Wait(); close(done) }()
		select {
		case <-done:
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("the other volume's restore never began")
		}
	}
	h.must(h.srv.Restore(context.Background()))
	if len(h.m.mounts) != 2 {
		t.Fatalf("%d mounts restored, want 2", len(h.m.mounts))
	}
}

// A volume deleted meanwhile is forgotten, not restored.
func TestRestoreForgetsDeletedVolume(t *testing.T) {
	h := newHarness(t, mountVolume())
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	h.must(h.stage(c, nil))
	h.be.mu.Lock()
	delete(h.be.volumes, volID)
	h.be.mu.Unlock()
	h.must(h.srv.Restore(context.Background()))
	if st, _ := h.srv.state.load(volID); st != nil {
		t.Fatal("state of a deleted volume kept")
	}
}

// A state file a machine crash left empty (written, renamed, its data never
// on disk) is no state: neither the volume's stage nor the listing of every
// staged volume fails on it. A file that holds something else is corrupt.
func TestStateEmptyFileIsNoState(t *testing.T) {
	st, err := newStateStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.save(&staged{VolumeID: "vol-kept", StagingPath: "/staging/kept"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(st.file("vol-cut"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := st.load("vol-cut"); got != nil || err != nil {
		t.Fatalf("load of an empty state file = %+v, %v; want no state", got, err)
	}
	all, err := st.list()
	if err != nil || len(all) != 1 || all[0].VolumeID != "vol-kept" {
		t.Fatalf("list = %+v, %v; want only vol-kept", all, err)
	}
	if err := os.WriteFile(st.file("vol-cut"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.load("vol-cut"); err == nil {
		t.Fatal("load of a truncated state file succeeded")
	}
}
