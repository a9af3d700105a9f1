package node

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// fakeFilesystem is a backend.FilesystemNode: its mounts go into the fake
// mounter's table, from a directory named after the volume.
type fakeFilesystem struct {
	*fakeBackend
	m        *fakeMounter
	mu       sync.Mutex
	mountErr error // Mount's and Check's answer when set
	mounts   []bool
	unmounts int
}

func (f *fakeFilesystem) Mount(_ context.Context, v *backend.Volume, staging string, readOnly bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mountErr != nil {
		return f.mountErr
	}
	f.mounts = append(f.mounts, readOnly)
	if mounted, err := f.m.IsMountPoint(staging); err != nil || mounted {
		return err
	}
	return f.m.BindMount("/shared/dir/volumes/"+v.ID, staging, nil)
}

func (f *fakeFilesystem) Unmount(_ context.Context, _, staging string) error {
	f.mu.Lock()
	f.unmounts++
	f.mu.Unlock()
	return f.m.Unmount(staging)
}

func (f *fakeFilesystem) Check(context.Context, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mountErr
}

func dirVolume(mode string) *backend.Volume {
	return &backend.Volume{ID: volID, VolumeSpec: backend.VolumeSpec{Name: "shared", CapacityBytes: 1 << 30, AccessMode: mode}}
}

func newFilesystemHarness(t *testing.T, v *backend.Volume) (*harness, *fakeFilesystem) {
	t.Helper()
	h := newHarness(t, v)
	fs := &fakeFilesystem{fakeBackend: h.be, m: h.m}
	srv, err := New(context.Background(), fs, h.m, Config{NodeID: "node-a", MaxVolumesPerNode: 8, StateDir: filepath.Join(h.root, "state")})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	return h, fs
}

func TestFilesystemVolumeIsMountedNotAttached(t *testing.T) {
	h, fs := newFilesystemHarness(t, dirVolume("MULTI_NODE_MULTI_WRITER"))
	c := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	t2 := h.target + "-2"
	h.must(h.publish(c, h.target, false))
	h.must(h.publish(c, t2, true))
	if len(h.be.attachPC) != 0 || h.be.isAttached(volID) {
		t.Fatal("a filesystem volume was attached as a device")
	}
	if mt, ok := h.m.mounted(h.staging); !ok || mt.source != "/shared/dir/volumes/"+volID {
		t.Fatalf("staging mount: %+v %v", mt, ok)
	}
	for _, tg := range []string{h.target, t2} {
		if mt, ok := h.m.mounted(tg); !ok || mt.source != h.staging || slices.Contains(mt.options, "ro") != (tg == t2) {
			t.Fatalf("target %s: %+v %v", tg, mt, ok)
		}
	}
	if !slices.Equal(fs.mounts, []bool{false}) {
		t.Errorf("Mount calls (read-only each): %v, want one: a volume still staged is published as it is", fs.mounts)
	}

	// Health: the directory as the backend sees it.
	health := func() *csi.VolumeHealth {
		resp, err := h.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: volID, StagingTargetPath: h.staging, VolumePublishPath: h.target})
		h.must(err)
		return resp.GetVolumeHealth()
	}
	if hs := health().GetHealthStatuses(); len(hs) != 0 {
		t.Fatalf("healthy volume: %v", hs)
	}
	stats, err := h.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: h.target})
	h.must(err)
	if len(stats.GetUsage()) != 2 || stats.GetUsage()[0].GetTotal() <= 0 {
		t.Errorf("stats: the filesystem's figures expected, got %v", stats.GetUsage())
	}
	if _, err := h.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: volID, VolumePath: h.target}); err != nil {
		t.Errorf("NodeExpandVolume of a directory: %v", err)
	}
	fs.mountErr = csierr.Precondition("data directory /shared carries no store marker")
	if hs := health().GetHealthStatuses(); len(hs) != 1 || hs[0].GetReason() != "DirectoryUnusable" {
		t.Fatalf("volume whose directory is unusable: %v", hs)
	}
	us, err := h.srv.VolumeUsage(context.Background())
	h.must(err)
	if len(us) != 1 || us[0].Abnormal != "DirectoryUnusable" {
		t.Errorf("metrics usage: %+v", us)
	}
	fs.mountErr = nil

	h.must(h.unpublish(h.target))
	if _, ok := h.m.mounted(h.staging); !ok || fs.unmounts != 0 {
		t.Fatal("staging released before the last unpublish")
	}
	h.must(h.unpublish(t2))
	if _, ok := h.m.mounted(h.staging); ok || fs.unmounts != 1 {
		t.Fatalf("staging still mounted after the last unpublish (%d unmounts)", fs.unmounts)
	}
	if st, _ := h.srv.state.load(volID); st != nil {
		t.Errorf("state left: %+v", st)
	}
}

func TestFilesystemMountRefusedLeavesNothingMounted(t *testing.T) {
	h, fs := newFilesystemHarness(t, dirVolume("MULTI_NODE_MULTI_WRITER"))
	fs.mountErr = csierr.Precondition("data directory /shared is on the root filesystem")
	err := h.publish(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), h.target, false)
	if csierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish with the shared mount missing: %v, want FailedPrecondition", err)
	}
	if _, ok := h.m.mounted(h.target); ok {
		t.Fatal("target mounted although the directory was refused")
	}
	// Once the mount is back, the same call goes through.
	fs.mountErr = nil
	h.must(h.publish(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), h.target, false))
}

// A volume still staged is published again only after the backend's
// check of its directory.
func TestFilesystemPublishChecksAStagedDirectory(t *testing.T) {
	h, fs := newFilesystemHarness(t, dirVolume("MULTI_NODE_MULTI_WRITER"))
	c := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	h.must(h.publish(c, h.target, false))
	fs.mountErr = csierr.Precondition("data directory /shared carries no store marker")
	if err := h.publish(c, h.target+"-2", false); csierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second publish with the shared mount gone: %v, want FailedPrecondition", err)
	}
	if _, ok := h.m.mounted(h.target + "-2"); ok {
		t.Fatal("published although the directory was refused")
	}
}

func TestFilesystemRestoreMountsAgain(t *testing.T) {
	h, fs := newFilesystemHarness(t, dirVolume("SINGLE_NODE_READER_ONLY"))
	h.must(h.publish(mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), h.target, false))
	h.m.Unmount(h.staging)
	h.m.Unmount(h.target)
	h.must(h.srv.Restore(context.Background()))
	if _, ok := h.m.mounted(h.staging); !ok {
		t.Fatal("staging not restored")
	}
	if mt, ok := h.m.mounted(h.target); !ok || !slices.Contains(mt.options, "ro") {
		t.Fatalf("target not restored read-only: %+v %v", mt, ok)
	}
	if !slices.Equal(fs.mounts, []bool{true, true}) {
		t.Errorf("Mount calls: %v, want two read-only", fs.mounts)
	}
}

func TestMultiWriterMountOnlyOnSharedFilesystems(t *testing.T) {
	c := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	h := newHarness(t, mountVolume())
	if err := h.publish(c, h.target, false); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("MULTI_NODE_MULTI_WRITER mount of a block-device volume: %v, want InvalidArgument", err)
	}
	fh, _ := newFilesystemHarness(t, dirVolume("MULTI_NODE_MULTI_WRITER"))
	if err := fh.publish(blockCap(), fh.target, false); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("block access to a directory: %v, want InvalidArgument", err)
	}
}
