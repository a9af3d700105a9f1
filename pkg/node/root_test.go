package node_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/loop"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/node"
)

// These tests use real loop devices, mkfs and mounts. They need root; they
// skip without it, except in CI (CI=true), where they must run.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	testenv.RequireRoot(t, append([]string{"mkfs.ext4", "blkid"}, tools...)...)
}

// cluster is a data directory with a controller and one node server per
// node id, each with its own state, as on separate machines sharing a
// filesystem.
type cluster struct {
	t     *testing.T
	dir   string
	be    *loop.Backend
	ctrl  *controller.Server
	nodes map[string]*node.Server
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	dir := t.TempDir()
	be, err := loop.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, dir: dir, be: be, ctrl: controller.New(be, 0), nodes: map[string]*node.Server{}}
}

// node returns the node server for id, creating it (or, with restart, a
// fresh one on the same state, as after a process restart).
func (c *cluster) node(id string, restart bool) *node.Server {
	c.t.Helper()
	if s, ok := c.nodes[id]; ok && !restart {
		return s
	}
	be, err := loop.New(filepath.Join(c.dir, "data"))
	if err != nil {
		c.t.Fatal(err)
	}
	s, err := node.New(context.Background(), be.ForNode(id), node.NewMounter(), node.Config{
		NodeID: id, StateDir: filepath.Join(c.dir, "data/node-state", id)})
	if err != nil {
		c.t.Fatal(err)
	}
	c.nodes[id] = s
	return s
}

func (c *cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

func capability(fsType string, block bool) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}}
	}
	return c
}

func (c *cluster) create(name, fsType string, size int64, block bool, src *csi.VolumeContentSource) string {
	c.t.Helper()
	params := map[string]string{}
	if !block {
		params["fsType"] = fsType
	}
	resp, err := c.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, Parameters: params, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{capability(fsType, block)}, VolumeContentSource: src})
	c.must(err)
	return resp.GetVolume().GetVolumeId()
}

// paths are Swarm's: /data/staged/<swarm id> and /data/published/<swarm id>,
// under a test root, with no parent directories.
func (c *cluster) paths(nodeID, volID string) (staging, target string) {
	root := filepath.Join(c.dir, nodeID)
	return filepath.Join(root, "data/staged", volID), filepath.Join(root, "data/published", volID)
}

// attach runs what Swarm does to start a task on a node: controller
// publish, then stage and publish with an empty publish context.
func (c *cluster) attach(nodeID, volID, fsType string, block bool) string {
	c.t.Helper()
	ctx := context.Background()
	capab := capability(fsType, block)
	n := c.node(nodeID, false) // the node plugin registers at start
	_, err := c.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: nodeID, VolumeCapability: capab})
	c.must(err)
	staging, target := c.paths(nodeID, volID)
	_, err = n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: capab})
	c.must(err)
	_, err = n.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capab})
	c.must(err)
	return target
}

// detach runs what Swarm does when the task is gone: node unpublish (and
// no unstage), then controller unpublish.
func (c *cluster) detach(nodeID, volID string) {
	c.t.Helper()
	ctx := context.Background()
	_, target := c.paths(nodeID, volID)
	_, err := c.node(nodeID, false).NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
	c.must(err)
	_, err = c.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: nodeID})
	c.must(err)
}

// released checks that nothing of the volume is left on the machine: no
// mount of its paths, no loop device on its image.
func (c *cluster) released(volID string) {
	c.t.Helper()
	var m []string
	for _, p := range mountsUnder(c.t, c.dir) {
		if strings.HasSuffix(p, "/"+volID) {
			m = append(m, p)
		}
	}
	if len(m) > 0 {
		c.t.Fatalf("mounts left behind: %v", m)
	}
	if devs := loopsOn(c.t, filepath.Join(c.dir, "data/volumes", volID+".img")); len(devs) > 0 {
		c.t.Fatalf("loop devices left attached: %v", devs)
	}
}

func (c *cluster) cleanup() {
	for _, m := range mountsUnder(c.t, c.dir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	ents, _ := os.ReadDir(filepath.Join(c.dir, "data/volumes"))
	for _, e := range ents {
		for _, d := range loopsOn(c.t, filepath.Join(c.dir, "data/volumes", e.Name())) {
			_ = exec.Command("losetup", "-d", d).Run()
		}
	}
}

func mountsUnder(t *testing.T, dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func loopsOn(t *testing.T, image string) []string {
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == image {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(p))))
		}
	}
	return out
}

func writeSynced(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
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
}

func fsBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

// A stateful task moves: it writes on node A, Swarm unpublishes it there
// without NodeUnstage, the volume is expanded while detached, and it starts
// on node B, where the filesystem has grown at stage and the data is there.
func TestRealMoveBetweenNodes(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			ctx := context.Background()
			id := c.create("db", fsType, 320<<20, false, nil)

			target := c.attach("node-a", id, fsType, false)
			payload := bytes.Repeat([]byte("swarm-csi "), 100000)
			writeSynced(t, filepath.Join(target, "data"), payload)
			before := fsBytes(t, target)
			c.detach("node-a", id)
			c.released(id)
			staging, _ := c.paths("node-a", id)
			_, err := c.node("node-a", false).NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			c.must(err) // a late NodeUnstage is a no-op

			_, err = c.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 640 << 20}})
			c.must(err)

			target = c.attach("node-b", id, fsType, false)
			got, err := os.ReadFile(filepath.Join(target, "data"))
			c.must(err)
			if !bytes.Equal(got, payload) {
				t.Fatal("data written on node-a differs on node-b")
			}
			if after := fsBytes(t, target); after < before+250<<20 {
				t.Fatalf("filesystem did not grow at stage: %d bytes before, %d after", before, after)
			}
			c.detach("node-b", id)
			c.released(id)
			_, err = c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			c.must(err)
		})
	}
}

// A restarted driver finds its loop devices (by their tags) and its mounts
// (from its node state) and releases them at the last unpublish.
func TestRealRestartFindsDevicesAndMounts(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	defer c.cleanup()
	id := c.create("restart", "ext4", 64<<20, false, nil)
	target := c.attach("node-a", id, "ext4", false)
	writeSynced(t, filepath.Join(target, "f"), []byte("before restore"))

	c.node("node-a", true) // a new process on the same state
	ctx := context.Background()
	staging, _ := c.paths("node-a", id)
	capab := capability("ext4", false)
	// Swarm repeats stage and publish after a daemon restart: both find
	// what is there and change nothing.
	_, err := c.node("node-a", false).NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capab})
	c.must(err)
	_, err = c.node("node-a", false).NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capab})
	c.must(err)
	if devs := loopsOn(t, filepath.Join(c.dir, "data/volumes", id+".img")); len(devs) != 1 {
		t.Fatalf("want exactly one loop device after restart and restage, have %v", devs)
	}

	// A plugin disable takes every mount away while Swarm keeps the volume
	// published: the next process restores them.
	for _, p := range []string{target, staging} {
		c.must(unix.Unmount(p, 0))
	}
	c.must(c.node("node-a", true).Restore(ctx))
	got, err := os.ReadFile(filepath.Join(target, "f"))
	c.must(err)
	if string(got) != "before restore" {
		t.Fatalf("after restore the target holds %q", got)
	}
	if devs := loopsOn(t, filepath.Join(c.dir, "data/volumes", id+".img")); len(devs) != 1 {
		t.Fatalf("want exactly one loop device after restore, have %v", devs)
	}
	c.detach("node-a", id)
	c.released(id)
}

// Block access publishes the device itself at the target path.
func TestRealBlockVolume(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	defer c.cleanup()
	id := c.create("raw", "", 32<<20, true, nil)
	target := c.attach("node-a", id, "", true)
	fi, err := os.Stat(target)
	c.must(err)
	if fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("target %s is %v, not a device", target, fi.Mode())
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	c.must(err)
	_, err = f.WriteAt([]byte("raw bytes"), 4096)
	c.must(err)
	c.must(f.Sync())
	c.must(f.Close())
	c.detach("node-a", id)
	c.released(id)
	img, err := os.ReadFile(filepath.Join(c.dir, "data/volumes", id+".img"))
	c.must(err)
	if !bytes.Equal(img[4096:4096+9], []byte("raw bytes")) {
		t.Fatal("bytes written to the block device are not in the image")
	}
}

// Online expansion: the filesystem grows while the volume is published.
// The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE; without it the
// node says so and the filesystem grows at the next stage instead.
func TestRealOnlineExpansion(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			ctx := context.Background()
			id := c.create("grow", fsType, 320<<20, false, nil)
			target := c.attach("node-a", id, fsType, false)
			before := fsBytes(t, target)
			_, err := c.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
			c.must(err)
			resp, err := c.node("node-a", false).NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
			if fsType == "ext4" && !haveSysResource(t) {
				if code := status.Code(csierr.Status(err)); code != codes.FailedPrecondition || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
					t.Fatalf("online ext4 growth without CAP_SYS_RESOURCE: got %v, want FailedPrecondition naming it", err)
				}
				c.detach("node-a", id)
				target = c.attach("node-a", id, fsType, false)
			} else {
				c.must(err)
				if resp.GetCapacityBytes() != 1<<30 {
					t.Fatalf("NodeExpandVolume reports %d bytes, want %d", resp.GetCapacityBytes(), 1<<30)
				}
			}
			if after := fsBytes(t, target); after < before+600<<20 {
				t.Fatalf("filesystem did not grow: %d bytes before, %d after", before, after)
			}
			stats, err := c.node("node-a", false).NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			c.must(err)
			if len(stats.GetUsage()) != 2 || stats.GetUsage()[0].GetTotal() < before+600<<20 {
				t.Fatalf("stats after expansion: %v", stats.GetUsage())
			}
			c.detach("node-a", id)
			c.released(id)
		})
	}
}

// The node's growth check grows a volume in use that the controller
// expanded, with no NodeExpandVolume (Swarm sends none). A mounted ext4
// without CAP_SYS_RESOURCE cannot grow: it stays as it is and grows at the
// next stage.
func TestRealGrowthWatch(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			id := c.create("watch", fsType, 320<<20, false, nil)
			target := c.attach("node-a", id, fsType, false)
			before := fsBytes(t, target)
			watching := make(chan struct{})
			go func() {
				defer close(watching)
				c.node("node-a", false).WatchGrowth(ctx, 100*time.Millisecond)
			}()
			// A check in progress holds the volume's lock (a CO's call
			// meanwhile is Aborted and retried): stop it before detaching.
			stop := func() {
				cancel()
				<-watching
			}
			_, err := c.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
			c.must(err)
			grown := func(wait time.Duration) bool {
				for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					if fsBytes(t, target) >= before+600<<20 {
						return true
					}
				}
				return false
			}
			if fsType == "ext4" && !haveSysResource(t) {
				if grown(time.Second) {
					t.Fatal("a mounted ext4 grew without CAP_SYS_RESOURCE")
				}
				stop()
				c.detach("node-a", id)
				target = c.attach("node-a", id, fsType, false)
				if fsBytes(t, target) < before+600<<20 {
					t.Fatalf("ext4 did not grow at its next stage: %d bytes", fsBytes(t, target))
				}
			} else if !grown(10 * time.Second) {
				t.Fatalf("the growth check did not grow the mounted %s: %d bytes before, %d after", fsType, before, fsBytes(t, target))
			}
			stop()
			c.detach("node-a", id)
			c.released(id)
		})
	}
}

func haveSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// A snapshot and a clone mount beside their source on the same node (XFS
// needs nouuid for that) and hold the source's data.
func TestRealSnapshotAndClone(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			ctx := context.Background()
			src := c.create("src", fsType, 320<<20, false, nil)
			target := c.attach("node-a", src, fsType, false)
			writeSynced(t, filepath.Join(target, "f"), []byte("snapshot me"))
			snap, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src})
			c.must(err)
			fromSnap := c.create("from-snap", fsType, 320<<20, false, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
			clone := c.create("clone", fsType, 320<<20, false, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src}}})
			for _, id := range []string{fromSnap, clone} {
				tgt := c.attach("node-a", id, fsType, false)
				got, err := os.ReadFile(filepath.Join(tgt, "f"))
				c.must(err)
				if string(got) != "snapshot me" {
					t.Fatalf("copy %s holds %q", id, got)
				}
			}
			for _, id := range []string{src, fromSnap, clone} {
				c.detach("node-a", id)
				c.released(id)
			}
		})
	}
}

// A volume's mountOptions reach the kernel's mount at stage, besides the
// driver's own (nouuid for xfs).
func TestRealMountOptions(t *testing.T) {
	for fsType, opts := range map[string]string{"ext4": "noatime,commit=30", "xfs": "noatime,logbsize=256k"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			ctx := context.Background()
			resp, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: "db", Parameters: map[string]string{"fsType": fsType, "mountOptions": opts},
				CapacityRange:      &csi.CapacityRange{RequiredBytes: 320 << 20},
				VolumeCapabilities: []*csi.VolumeCapability{capability(fsType, false)}})
			c.must(err)
			id := resp.GetVolume().GetVolumeId()
			target := c.attach("node-a", id, fsType, false)
			staging, _ := c.paths("node-a", id)
			got := mountOptions(t, staging)
			for _, want := range strings.Split(opts, ",") {
				if !slices.Contains(got, want) {
					t.Errorf("staging mount options %v lack %s", got, want)
				}
			}
			if fsType == "xfs" && !slices.Contains(got, "nouuid") {
				t.Errorf("xfs staging mount options %v lack nouuid", got)
			}
			// The container's bind mount keeps the per-mount flags.
			if got := mountOptions(t, target); !slices.Contains(got, "noatime") {
				t.Errorf("published mount options %v lack noatime", got)
			}
			c.detach("node-a", id)
			c.released(id)
		})
	}
}

// mountOptions returns the per-mount and the filesystem's options of the
// mount at path, from mountinfo.
func mountOptions(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) > 5 && f[4] == path && sep > 0 && len(f) > sep+3 {
			return append(strings.Split(f[5], ","), strings.Split(f[sep+3], ",")...)
		}
	}
	t.Fatalf("%s is not a mount point", path)
	return nil
}
