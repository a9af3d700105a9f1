package sanity

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// rbdNode is one driver process of the rbd backend, as on one node of a
// swarm: its own data directory and node id, the shared Ceph cluster.
type rbdNode struct {
	id, dir, sock, bin string
	args               []string
	proc               *driverProc
	ctrl               csi.ControllerClient
	node               csi.NodeClient
}

// startRBDNode starts a driver with node id id and the given prefix, and
// stops it (checking that it left nothing mounted or attached) at the end
// of the test.
func startRBDNode(t *testing.T, bin string, c *cephtest.Cluster, id, prefix string, extra ...string) *rbdNode {
	t.Helper()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	sockDir, err := os.MkdirTemp("", "swarm-csi-rbd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	n := &rbdNode{id: id, dir: dir, sock: filepath.Join(sockDir, "csi.sock"), bin: bin}
	n.args = append([]string{"--node-id", id, "--backend", "rbd", "--rbd-monitors", c.MonHost, "--rbd-pool", c.Pool,
		"--rbd-user", c.User, "--rbd-keyring", c.Keyring, "--rbd-attach", "fuse", "--rbd-prefix", prefix}, extra...)
	n.proc = startDriver(t, bin, "unix://"+n.sock, dataDir, filepath.Join(dir, "driver.log"), n.args, nil)
	t.Cleanup(func() {
		n.proc.stop(t)
		checkLeftovers(t, dir, dataDir)
		if t.Failed() {
			t.Logf("driver %s output:\n%s", id, tailFile(n.proc.logPath, driverLogTailLines))
		}
	})
	if _, err := n.proc.waitReady(t.Context(), n.sock); err != nil {
		t.Fatalf("driver %s: %v", id, err)
	}
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n.ctrl, n.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return n
}

// restart stops the driver with SIGTERM, which leaves its volumes
// attached (rbd-fuse runs in a session of its own), and starts a new
// process on the same data directory, which must find them again.
func (n *rbdNode) restart(t *testing.T) {
	t.Helper()
	n.proc.stop(t)
	n.proc = startDriver(t, n.bin, "unix://"+n.sock, filepath.Join(n.dir, "data"), filepath.Join(n.dir, "driver-restarted.log"), n.args, nil)
	if _, err := n.proc.waitReady(t.Context(), n.sock); err != nil {
		t.Fatalf("driver %s after a restart: %v", n.id, err)
	}
}

// retryAborted retries a call answered Aborted (another operation on the
// volume, such as a restarted driver restoring its mounts), as a CO does.
func retryAborted(call func() error) error {
	err := call()
	for i := 0; i < 100 && status.Code(err) == codes.Aborted; i++ {
		time.Sleep(100 * time.Millisecond)
		err = call()
	}
	return err
}

func needRBD(t *testing.T) (*cephtest.Cluster, string) {
	t.Helper()
	testenv.Require(t, cephtest.Missing())
	return sharedCeph(t), buildDriver(t)
}

func mountCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// stage runs what Swarm does to start a task on node n: controller
// publish, stage and publish with Swarm's paths and no publish context.
func (n *rbdNode) stage(t *testing.T, ctrl csi.ControllerClient, volID string, c *csi.VolumeCapability) string {
	t.Helper()
	ctx := t.Context()
	if _, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: n.id, VolumeCapability: c}); err != nil {
		t.Fatalf("ControllerPublishVolume to %s: %v", n.id, err)
	}
	staging, target := filepath.Join(n.dir, "data/staged", "v"), filepath.Join(n.dir, "data/published", "v")
	if _, err := n.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatalf("NodeStageVolume on %s: %v", n.id, err)
	}
	if _, err := n.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
		t.Fatalf("NodePublishVolume on %s: %v", n.id, err)
	}
	return target
}

// release runs what Swarm does when the task is gone: node unpublish, a
// late unstage (a no-op by then), controller unpublish.
func (n *rbdNode) release(t *testing.T, ctrl csi.ControllerClient, volID string) {
	t.Helper()
	ctx := t.Context()
	staging, target := filepath.Join(n.dir, "data/staged", "v"), filepath.Join(n.dir, "data/published", "v")
	err := retryAborted(func() error {
		_, err := n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
		return err
	})
	if err != nil {
		t.Fatalf("NodeUnpublishVolume on %s: %v", n.id, err)
	}
	if _, err := n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume on %s: %v", n.id, err)
	}
	if _, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: n.id}); err != nil {
		t.Fatalf("ControllerUnpublishVolume from %s: %v", n.id, err)
	}
}

// A task moves between nodes with its data: written and fsynced through
// node A's driver process, read back byte for byte through node B's. While
// A holds the single-writer volume, B is refused. A's driver restarts in
// between, and its successor finds and releases what it attached.
func TestRBDMove(t *testing.T) {
	c, bin := needRBD(t)
	start := time.Now()
	a := startRBDNode(t, bin, c, "node-a", "move")
	b := startRBDNode(t, bin, c, "node-b", "move")
	ctx := t.Context()
	snw := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol, err := a.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "move", VolumeCapabilities: []*csi.VolumeCapability{snw},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()

	target := a.stage(t, a.ctrl, id, snw)
	payload := make([]byte, 8<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(target, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// Swarm publishes to the new node before the old one lets go: refused.
	_, err = b.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: b.id, VolumeCapability: snw})
	wantCode(t, "ControllerPublishVolume to node-b while node-a holds the volume", err, codes.FailedPrecondition)

	// A driver restart leaves the volume in use attached.
	a.restart(t)
	if got, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("after node-a's driver restarted, its mount reads %d bytes, %v", len(got), err)
	}
	a.release(t, a.ctrl, id)
	// The controller of node B's process serves the rest: the records are
	// in Ceph, not in either process.
	target = b.stage(t, b.ctrl, id, snw)
	got, err := os.ReadFile(filepath.Join(target, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("read back %d bytes on node-b that differ from the %d written on node-a", len(got), len(payload))
	}
	b.release(t, b.ctrl, id)
	if _, err := b.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume after the move: %v", err)
	}

	// MULTI_NODE_SINGLE_WRITER: a reader may join, a second writer not.
	mnsw := mountCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)
	vol, err = a.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "one-writer", VolumeCapabilities: []*csi.VolumeCapability{mnsw},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id = vol.GetVolume().GetVolumeId()
	if _, err := a.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: a.id, VolumeCapability: mnsw}); err != nil {
		t.Fatal(err)
	}
	_, err = a.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: b.id, VolumeCapability: mnsw})
	wantCode(t, "a second writer on node-b", err, codes.FailedPrecondition)
	if _, err := a.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: b.id, VolumeCapability: mnsw, Readonly: true}); err != nil {
		t.Fatalf("a reader on node-b: %v", err)
	}
	for _, n := range []string{a.id, b.id} {
		if _, err := a.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: n}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	checkPoolClean(t, c, "move")
	t.Logf("move test: %s (8 MiB written on node-a, read back on node-b)", time.Since(start).Round(100*time.Millisecond))
}

// checkPoolClean fails if images of prefix other than its index, or
// trash entries, are left in the pool.
func checkPoolClean(t *testing.T, c *cephtest.Cluster, prefix string) {
	t.Helper()
	images, trash, err := c.Images(context.Background(), prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range images {
		if i != prefix+"-index" {
			t.Errorf("left behind in pool %s: image %s", c.Pool, i)
		}
	}
	for _, i := range trash {
		t.Errorf("left behind in the trash of pool %s: image %s", c.Pool, i)
	}
}

// Failures: a wrong key is refused with a clear error, at start and per
// request; with the monitor stopped a call that needs it fails Unavailable
// or DeadlineExceeded (after the per-call timeout, --rbd-timeout), and a
// retry once the monitor is back converges; nothing is left behind.
func TestRBDFailures(t *testing.T) {
	c, bin := needRBD(t)
	ctx := t.Context()

	// A wrong configured key stops the driver at start, saying why.
	bad := filepath.Join(t.TempDir(), "bad.keyring")
	if err := os.WriteFile(bad, []byte("[client."+c.User+"]\n\tkey = AQBVdkJpAAAAABAAtfQEGcq5JXH5xZ4Pu5ABCQ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, err := exec.CommandContext(ctx, bin, "--endpoint", filepath.Join(dir, "csi.sock"), "--data-dir", filepath.Join(dir, "data"),
		"--node-id", "bad-key", "--backend", "rbd", "--rbd-monitors", c.MonHost, "--rbd-pool", c.Pool, "--rbd-user", c.User,
		"--rbd-keyring", bad, "--rbd-attach", "fuse", "--rbd-prefix", "fail").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused the cephx key") {
		t.Fatalf("driver with a wrong key: %v\n%s", err, out)
	}

	n := startRBDNode(t, bin, c, "node-f", "fail", "--rbd-timeout", "4s")
	capab := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	create := &csi.CreateVolumeRequest{Name: "survivor", VolumeCapabilities: []*csi.VolumeCapability{capab},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}}

	// A wrong key as a request's secret: Unauthenticated, without the key.
	wrong := &csi.CreateVolumeRequest{Name: "wrong-key", VolumeCapabilities: create.VolumeCapabilities,
		Secrets: map[string]string{"userKey": "AQCDdkJpAAAAABAAbSpeELlbuCc7QdVAFmw3tw=="}}
	_, err = n.ctrl.CreateVolume(ctx, wrong)
	wantCode(t, "CreateVolume with a wrong key in its secrets", err, codes.Unauthenticated)
	if strings.Contains(err.Error(), "AQCD") {
		t.Fatalf("the error shows the key: %v", err)
	}

	if err := c.StopMon(); err != nil {
		t.Fatal(err)
	}
	monBack := false
	defer func() {
		if !monBack {
			_ = c.StartMon()
		}
	}()
	// A call that needs the monitor (GetCapacity: a monitor command) fails
	// within the timeout; one that the OSDs serve on the established
	// connection (CreateVolume) may succeed, or fails the same way.
	begin := time.Now()
	_, err = n.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("GetCapacity with the monitor stopped: %v, want Unavailable or DeadlineExceeded", err)
	}
	t.Logf("GetCapacity with the monitor stopped, after %s: %v", time.Since(begin).Round(100*time.Millisecond), err)
	begin = time.Now()
	_, err = n.ctrl.CreateVolume(ctx, create)
	if code := status.Code(err); err != nil && code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("CreateVolume with the monitor stopped: %v, want success, Unavailable or DeadlineExceeded", err)
	}
	t.Logf("CreateVolume with the monitor stopped, after %s: %v", time.Since(begin).Round(100*time.Millisecond), err)
	if err := c.StartMon(); err != nil {
		t.Fatal(err)
	}
	monBack = true

	// Retried as Swarm retries, until the cluster answers again.
	var vol *csi.CreateVolumeResponse
	for i := 0; i < 60; i++ {
		if vol, err = n.ctrl.CreateVolume(ctx, create); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("CreateVolume after the monitor came back: %v", err)
	}
	id := vol.GetVolume().GetVolumeId()
	target := n.stage(t, n.ctrl, id, capab)
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("after the outage"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.release(t, n.ctrl, id)
	if _, err := n.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	checkPoolClean(t, c, "fail")
}

// Snapshots and copies can go in any order: a snapshot before the volumes
// made from it, a volume before its clones (its image waits in the rbd
// trash and goes with its last clone, down a chain of clones too). Only a
// volume with snapshots of its own is refused. The copies hold the data.
func TestRBDCopiesDeletedInAnyOrder(t *testing.T) {
	c, bin := needRBD(t)
	n := startRBDNode(t, bin, c, "node-c", "copies")
	ctx := t.Context()
	capab := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	create := func(name string, src *csi.VolumeContentSource) string {
		t.Helper()
		resp, err := n.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{capab},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, VolumeContentSource: src})
		if err != nil {
			t.Fatalf("CreateVolume %s: %v", name, err)
		}
		return resp.GetVolume().GetVolumeId()
	}
	fromVolume := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	}
	del := func(id string, code codes.Code) {
		t.Helper()
		_, err := n.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		wantCode(t, "DeleteVolume "+id, err, code)
	}
	check := func(id string) {
		t.Helper()
		target := n.stage(t, n.ctrl, id, capab)
		got, err := os.ReadFile(filepath.Join(target, "f"))
		if err != nil || string(got) != "original" {
			t.Fatalf("copy %s holds %q, %v", id, got, err)
		}
		n.release(t, n.ctrl, id)
	}

	src := create("source", nil)
	target := n.stage(t, n.ctrl, src, capab)
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("original"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.release(t, n.ctrl, src)
	snap, err := n.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src})
	if err != nil {
		t.Fatal(err)
	}
	fromSnap := create("from-snap", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	clone := create("clone", fromVolume(src))
	cloneOfClone := create("clone-of-clone", fromVolume(clone))

	del(src, codes.FailedPrecondition) // it has a snapshot
	if _, err := n.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	del(src, codes.OK)   // to the trash: two copies depend on it
	del(clone, codes.OK) // to the trash: its clone depends on it
	check(fromSnap)
	check(cloneOfClone)
	del(cloneOfClone, codes.OK) // takes the clone out of the trash
	del(fromSnap, codes.OK)     // takes the source out of the trash
	checkPoolClean(t, c, "copies")
}
