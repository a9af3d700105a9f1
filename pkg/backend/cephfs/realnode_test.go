//go:build ceph && cgo

package cephfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/node"
)

// Through the node service, as Swarm calls it: publish without stage, two
// targets, a killed ceph-fuse reported abnormal then mounted again by the
// mount check, and the last unpublish ending the node's ceph-fuse.
func TestRealNodeServiceRecoversAKilledCephFuse(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := realBackend(t, "svc")
	v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "svc", CapacityBytes: 16 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(context.Background(), v.ID) })
	ns, err := b.ForNode("svc-node")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp(testRoot, "svc-")
	srv, err := node.New(ctx, ns, node.NewMounter(), node.Config{NodeID: "svc-node", StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	staging, t1, t2 := filepath.Join(dir, "staged", "v"), filepath.Join(dir, "published", "a"), filepath.Join(dir, "published", "b")
	c := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	publish := func(target string) {
		t.Helper()
		if _, err := srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.ID, StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: c}); err != nil {
			t.Fatal(err)
		}
	}
	// Right after a ceph-fuse mounts, an unmount of a bind of it may
	// answer EBUSY for a moment; Swarm retries a failed NodeUnpublishVolume,
	// and so does this, for up to 5 s.
	unpublish := func(target string) {
		t.Helper()
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			_, err := srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.ID, TargetPath: target})
			if err == nil {
				return
			}
			if !errors.Is(err, unix.EBUSY) || time.Since(start) > 5*time.Second {
				t.Fatal(err)
			}
			t.Logf("unpublish %s: %v: again", target, err)
		}
	}
	t.Cleanup(func() { unpublish(t1); unpublish(t2) })
	publish(t1)
	publish(t2)
	if err := os.WriteFile(filepath.Join(t1, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Stats from the subvolume: its quota, its bytes and files (the MDS
	// gathers them within seconds).
	if err := writeFull(filepath.Join(t2, "data"), 2<<20); err != nil {
		t.Fatal(err)
	}
	var bytes, inodes *csi.VolumeUsage
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(200 * time.Millisecond) {
		st, err := srv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.ID, VolumePath: t1})
		if err != nil {
			t.Fatal(err)
		}
		bytes, inodes = st.GetUsage()[0], st.GetUsage()[1]
		if bytes.GetUsed() >= 2<<20 && inodes.GetUsed() >= 2 {
			break
		}
	}
	if bytes.GetTotal() != 16*backend.MiB || bytes.GetUsed() < 2<<20 || bytes.GetAvailable() != bytes.GetTotal()-bytes.GetUsed() || inodes.GetUsed() != 2 {
		t.Errorf("stats: bytes %v, inodes %v; want the 16 MiB quota, 2 MiB and 2 files used", bytes, inodes)
	}
	health := func() string {
		h, err := srv.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.ID, StagingTargetPath: staging, VolumePublishPath: t1})
		if err != nil {
			t.Fatal(err)
		}
		if s := h.GetVolumeHealth().GetHealthStatuses(); len(s) > 0 {
			return s[0].GetReason()
		}
		return ""
	}
	if r := health(); r != "" {
		t.Fatalf("healthy volume reported %s", r)
	}
	pids := fusePids(staging)
	if len(pids) != 1 {
		t.Fatalf("ceph-fuse processes of %s: %v", staging, pids)
	}
	unix.Kill(pids[0], unix.SIGKILL)
	waitGone(t, pids[0])
	if _, err := os.ReadFile(filepath.Join(t2, "f")); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("read through the dead mount: %v", err)
	}
	if r := health(); r != "MountDead" {
		t.Fatalf("dead mount reported %q, want MountDead", r)
	}
	start := time.Now()
	go srv.WatchMounts(ctx, 100*time.Millisecond)
	for health() != "" {
		if time.Since(start) > 10*time.Second {
			t.Fatal("not mounted again after 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("mounted again after %v", time.Since(start))
	for _, target := range []string{t1, t2} {
		if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "x" {
			t.Fatalf("%s after recovery: %q %v", target, b, err)
		}
	}
	if got := sessions(t, "svc-node."+v.ID); got != 1 {
		t.Errorf("%d sessions for the node's mount, want 1", got)
	}
	unpublish(t1)
	if len(fusePids(staging)) != 1 {
		t.Fatal("ceph-fuse ended before the last unpublish")
	}
	unpublish(t2)
	if p := fusePids(staging); len(p) != 0 {
		t.Errorf("ceph-fuse still runs after the last unpublish: %v", p)
	}
	for _, p := range []string{staging, t1, t2} {
		if _, ok, _ := mountAt(p); ok {
			t.Errorf("%s still mounted", p)
		}
	}
}
