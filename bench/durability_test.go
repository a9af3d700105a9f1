package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// TestDurability checks that a write acknowledged by fsync in a published
// loop volume survives the driver killed with SIGKILL and the machine's
// power cut right after: it is in the image file on the data directory's
// disk, and another node reads it back.
//
// The data directory is a filesystem of its own on a loop device (the
// "disk"). Right after the fsync and the kill, the disk's content is
// copied with O_DIRECT: what the disk received, without the dirty pages
// the kernel holds for the image file, nor those of the volume's mount.
// The copy is mounted as the data directory of a second driver with
// another node id (nodes share a data directory), which stages the volume
// (replaying the journals, as after a power cut) and reads the file.
func TestDurability(t *testing.T) {
	requireSystem(t)
	bin := os.Getenv("SWARM_CSI_DRIVER")
	if bin == "" {
		var err error
		if bin, err = buildDriver(t.Context(), t.TempDir(), "loop"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		fs      string
		mutable map[string]string
	}{
		{"ext4", nil}, // the default
		{"xfs", nil},
		{"ext4", map[string]string{"directIO": "true"}},
		{"ext4", map[string]string{"directIO": "false"}},
	} {
		name := tc.fs
		if d := tc.mutable["directIO"]; d != "" {
			name += "-directIO=" + d
		}
		t.Run(name, func(t *testing.T) { testDurability(t, bin, tc.fs, tc.mutable) })
	}
}

func testDurability(t *testing.T, bin, fs string, mutable map[string]string) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	parent, err := filepath.EvalSymlinks(os.TempDir()) // mountinfo has real paths
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, "swarm-csi-durability-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if swept, err := sweep(dir); err != nil {
			t.Errorf("cleanup of %s: %v (swept %v)", dir, err, swept)
		}
	})
	run := func(args ...string) string {
		t.Helper()
		out, err := execute(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	size := int64(32 * mib)
	if fs == "xfs" {
		size = 300 * mib
	}
	// The data directory's disk: an ext4 filesystem on a loop device.
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{filepath.Join(a, "data"), filepath.Join(b, "data")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(dir, "disk.img")
	run("truncate", "-s", fmt.Sprint(size+128*mib), disk)
	diskDev := run("losetup", "--find", "--show", disk)
	run("mkfs.ext4", "-q", "-F", diskDev)
	run("mount", diskDev, filepath.Join(a, "data"))

	// Node A: a volume staged and published, a file written and fsynced,
	// the driver killed.
	drvA, err := startDriver(ctx, bin, a, []string{"--node-id", "node-a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer drvA.stop()
	benchA := &bench{cfg: defaultConfig(), dir: a, drv: drvA, log: t.Output()}
	if _, err := benchA.driverVolume("durable", fs, size, mutable).up(ctx); err != nil {
		t.Fatal(drvA.annotate(err))
	}
	want := make([]byte, 4*mib)
	rand.Read(want)
	target := benchA.driverTarget("durable")
	writeSynced(t, filepath.Join(target, "acknowledged"), want)
	if err := drvA.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-drvA.exited
	// A control: written without fsync, it is not expected on the disk.
	control := bytes.Repeat([]byte("not synced\n"), 4096)
	if err := os.WriteFile(filepath.Join(target, "unsynced"), control, 0o600); err != nil {
		t.Fatal(err)
	}

	// The power cut: the disk as it is now, read past every page cache.
	crash := filepath.Join(dir, "crash.img")
	run("dd", "if="+diskDev, "of="+crash, "bs=1M", "iflag=direct", "status=none")
	crashDev := run("losetup", "--find", "--show", crash)
	run("mount", crashDev, filepath.Join(b, "data"))

	// Node B, on the disk after the power cut: the volume moves to it.
	drvB, err := startDriver(ctx, bin, b, []string{"--node-id", "node-b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer drvB.stop()
	vols, err := drvB.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(vols.GetEntries()) != 1 {
		t.Fatalf("volumes on the disk after the power cut: %v, %v", vols, err)
	}
	volID := vols.GetEntries()[0].GetVolume().GetVolumeId()
	if _, err := drvB.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	benchB := &bench{cfg: defaultConfig(), dir: b, drv: drvB, log: t.Output()}
	volB := benchB.driverVolume("durable", fs, size, mutable)
	if _, err := volB.up(ctx); err != nil {
		t.Fatal(drvB.annotate(err))
	}
	got, err := os.ReadFile(filepath.Join(benchB.driverTarget("durable"), "acknowledged"))
	if err != nil {
		t.Fatalf("the fsynced file is lost: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the fsynced file came back with %d bytes, %d of them as written", len(got), commonPrefix(got, want))
	}
	if c, err := os.ReadFile(filepath.Join(benchB.driverTarget("durable"), "unsynced")); err == nil && bytes.Equal(c, control) {
		t.Logf("control: the file written without fsync reached the disk too (written back meanwhile)")
	} else {
		t.Logf("control: the file written without fsync did not reach the disk, as expected")
	}
	if _, err := volB.down(ctx); err != nil {
		t.Fatal(drvB.annotate(err))
	}
}

// writeSynced writes a new file and makes it durable as a database does:
// fsync of the file, then of its directory.
func writeSynced(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestDurabilityRBD checks the same of an rbd volume attached through
// rbd-fuse, whose loop device keeps the page cache (a single-node volume):
// a write acknowledged by fsync is in the cluster when the driver and the
// volume's rbd-fuse process are killed with SIGKILL right after, taking
// librbd's cache with them; the node's kernel, whose only way to the
// cluster was that process, can send it nothing more. The image is then
// read from the cluster by another client (rbd export, as client.admin),
// and the copy mounted on a loop device of its own (replaying the
// journal, as after a crash) must hold the file.
func TestDurabilityRBD(t *testing.T) {
	requireSystem(t)
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	bin := os.Getenv("SWARM_CSI_DRIVER") // a Ceph build, as for TestQuickRunRBD
	if bin == "" {
		var err error
		if bin, err = buildDriver(ctx, t.TempDir(), "rbd"); err != nil {
			t.Fatal(err)
		}
	}
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { testDurabilityRBD(t, ctx, bin, fs) })
	}
}

func testDurabilityRBD(t *testing.T, ctx context.Context, bin, fs string) {
	// A cluster of its own: the killed client keeps its image.
	cl, args, _, err := startCeph(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	})
	parent, err := filepath.EvalSymlinks(os.TempDir()) // mountinfo has real paths
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, "swarm-csi-durability-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if swept, err := sweep(dir); err != nil {
			t.Errorf("cleanup of %s: %v (swept %v)", dir, err, swept)
		}
	})
	run := func(args ...string) string {
		t.Helper()
		out, err := execute(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	size := int64(32 * mib)
	if fs == "xfs" {
		size = 300 * mib
	}
	drv, err := startDriver(ctx, bin, dir, append(args, "--node-id", "node-a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer drv.stop()
	b := &bench{cfg: defaultConfig(), dir: dir, drv: drv, log: t.Output(), ceph: cl}
	b.cfg.Backend = "rbd"
	if _, err := b.driverVolume("durable", fs, size, nil).up(ctx); err != nil {
		t.Fatal(drv.annotate(err))
	}
	vols, err := drv.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(vols.GetEntries()) != 1 {
		t.Fatalf("volumes: %v, %v", vols, err)
	}
	volID := vols.GetEntries()[0].GetVolume().GetVolumeId()
	// What is tested: the volume's loop device reads and writes the
	// rbd-fuse file through the page cache.
	_, loops, err := leftovers(dir)
	if err != nil || len(loops) != 1 {
		t.Fatalf("loop devices on the rbd-fuse file: %v, %v", loops, err)
	}
	dio, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loops[0]), "loop", "dio"))
	if err != nil || strings.TrimSpace(string(dio)) != "0" {
		t.Fatalf("%s: dio %q, %v; want the page cache (0) for a single-node volume", loops[0], dio, err)
	}

	want := make([]byte, 4*mib)
	rand.Read(want)
	target := b.driverTarget("durable")
	writeSynced(t, filepath.Join(target, "acknowledged"), want)
	fuse := rbdFuseUnder(dir)
	if len(fuse) != 1 {
		t.Fatalf("rbd-fuse processes under %s: %v, want one", dir, fuse)
	}
	if err := drv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-drv.exited
	// A control: written without fsync, it may or may not reach the
	// cluster before rbd-fuse goes.
	control := bytes.Repeat([]byte("not synced\n"), 4096)
	if err := os.WriteFile(filepath.Join(target, "unsynced"), control, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, pid := range fuse {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for len(rbdFuseUnder(dir)) > 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("rbd-fuse still runs after SIGKILL: %v", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}

	// Another client reads the image from the cluster.
	copyFile := filepath.Join(dir, "export.img")
	if _, err := cl.Admin(ctx, "rbd", "export", "--no-progress", volID, copyFile); err != nil {
		t.Fatal(err)
	}
	dev := run("losetup", "--find", "--show", copyFile)
	defer execute(context.Background(), "losetup", "-d", dev)
	mnt := filepath.Join(dir, "export")
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	opts := "rw"
	if fs == "xfs" {
		opts = "nouuid" // node-a's dead mount of the same filesystem is still there
	}
	run("mount", "-o", opts, dev, mnt)
	defer execute(context.Background(), "umount", mnt)
	got, err := os.ReadFile(filepath.Join(mnt, "acknowledged"))
	if err != nil {
		t.Fatalf("the fsynced file is lost: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the fsynced file came back with %d bytes, %d of them as written", len(got), commonPrefix(got, want))
	}
	if c, err := os.ReadFile(filepath.Join(mnt, "unsynced")); err == nil && bytes.Equal(c, control) {
		t.Logf("control: the file written without fsync reached the cluster too (written back meanwhile)")
	} else {
		t.Logf("control: the file written without fsync did not reach the cluster, as expected")
	}
}

// rbdFuseUnder returns the rbd-fuse processes whose mount point is under
// dir.
func rbdFuseUnder(dir string) []int {
	var pids []int
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == "rbd-fuse" && strings.HasPrefix(args[len(args)-1], dir+"/") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	return pids
}
