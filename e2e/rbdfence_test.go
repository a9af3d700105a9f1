package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// Fencing after node loss, on three nodes with the rbd flavour: a
// single-writer volume's task runs on worker X and writes; X's Engine is
// killed (SIGKILL) while its plugin and rbd-fuse go on running, and
// reaching Ceph; `docker node rm --force` X. Swarm never unpublishes the
// volume from a removed node, so the operator releases it (`swarm-csi
// volume release`, refused while X is in the swarm). The task starts on
// the other worker with X's data, the manager's plugin logs that it
// fenced X's client, and a write through X's still-running client fails.
// Data the new node writes survives the old client's attempt and a
// remount.
func TestRBDFenceAfterNodeLoss(t *testing.T) {
	requireSwarm(t)
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, cl := startCephSwarm(t, ctx, 3, rbdBackend)
	t.Logf("three-node rbd swarm up in %s (ceph on %s)", time.Since(start).Round(time.Millisecond), cl.MonHost)
	e := newEnv(t, c)
	o := newOperatorCLI(t, e)

	e.createVolume("fence-vol", "--type", "mount", "--scope", "single", "--sharing", "none")
	v, _ := e.waitCreated("fence-vol", 60*time.Second)
	vid := v.VolumeID()
	e.service("fence-app", writeScript, "--mount", "type=cluster,src=fence-vol,dst=/data", "--constraint", "node.role==worker")
	tk := e.waitRunning("fence-app", 120*time.Second)
	// Node ids while every Engine answers.
	ids, err := c.NodeIDs(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	x := ids[tk.NodeID]
	sum := strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]
	t.Logf("task %s runs on %s and wrote sha256 %s", tk.ID[:12], x.Name, sum)

	loops := slices.DeleteFunc(loopsTagged(t, vid), func(l harness.Loop) bool { return !rbdLoop(vid)(l) })
	fuse := rbdFusePIDs(t, x, path.Base(vid))
	if len(loops) != 1 || len(fuse) != 1 {
		t.Fatalf("%s: want one loop device and one rbd-fuse for %s, have %v and %v", x.Name, vid, loops, fuse)
	}
	xLoop, xFuse := loops[0].Dev, fuse[0]
	// The write that must fail later: the last 4 KiB of the device, free
	// space of the filesystem, written now through X as a check.
	size, err := exec.Command("blockdev", "--getsize64", xLoop).Output()
	if err != nil {
		t.Fatal(err)
	}
	var bytes int64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(size)), "%d", &bytes); err != nil {
		t.Fatal(err)
	}
	seek := fmt.Sprint(bytes/4096 - 1)
	writeX := func() error {
		wctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(wctx, "dd", "if=/dev/zero", "of="+xLoop, "bs=4096", "count=1", "seek="+seek, "oflag=direct").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := writeX(); err != nil {
		t.Fatalf("a write through %s's client %s before the loss: %v", x.Name, xLoop, err)
	}

	lost := time.Now()
	if err := x.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { endClient(t, xFuse, xLoop, path.Base(vid)) })
	for {
		out, _ := c.Manager().Docker(e.ctx, "node", "inspect", "--format", "{{.Status.State}}", x.Name)
		if strings.TrimSpace(out) == "down" {
			break
		}
		if time.Since(lost) > 90*time.Second {
			t.Fatalf("the manager still sees %s as %q 90 s after its Engine was killed", x.Name, strings.TrimSpace(out))
		}
		time.Sleep(500 * time.Millisecond)
	}
	down := time.Since(lost)
	if err := syscall.Kill(xFuse, 0); err != nil {
		t.Fatalf("%s's rbd-fuse (pid %d) is gone with its Engine: %v", x.Name, xFuse, err)
	}
	o.want(1, "docker node rm --force", "volume", "release", "fence-vol")
	e.docker("node", "rm", "--force", x.Name)
	if _, ok := e.tryNewTask("fence-app", tk.ID, 5*time.Second); ok {
		t.Fatalf("the volume moved from the removed %s by itself:\n%s", x.Name, e.servicePS("fence-app"))
	}
	released := time.Now()
	// The plugin's node id is the node's name.
	o.want(0, "released fence-vol from "+x.Name+", which no node of the swarm is any more", "volume", "release", "fence-vol")
	tk2 := e.waitNewTask("fence-app", tk.ID, 120*time.Second)
	y := ids[tk2.NodeID]
	moved := time.Since(released)
	if y == nil || y == x {
		t.Fatalf("after %s's removal the task runs on node %s", x.Name, tk2.NodeID)
	}
	t.Logf("%s seen down %s after its Engine was killed; after node rm and volume release the task runs on %s %s later",
		x.Name, down.Round(time.Millisecond), y.Name, moved.Round(time.Millisecond))
	execY := func(script string) string {
		t.Helper()
		out, err := y.Docker(e.ctx, "exec", tk2.Status.ContainerStatus.ContainerID, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if got := strings.Fields(execY("sha256sum /data/blob"))[0]; got != sum {
		t.Errorf("%s reads sha256 %s, %s wrote %s", y.Name, got, x.Name, sum)
	}
	log := e.pluginLogSince(c.Manager())
	fenced := ""
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "fenced") {
			fenced = l
		}
	}
	if !strings.Contains(fenced, x.Addr+":") {
		t.Errorf("the manager's plugin logged no fencing of %s's client (%s):\n%s", x.Name, x.Addr, lastLines(strings.Split(log, "\n"), 30))
	} else {
		t.Logf("manager's plugin: %s", fenced)
	}
	after := execY("dd if=/dev/urandom of=/data/after bs=1M count=4 conv=fsync 2>/dev/null && sync && sha256sum /data/after")
	after = strings.Fields(after)[0]

	// X's client still runs, and cannot write.
	if err := syscall.Kill(xFuse, 0); err != nil {
		t.Errorf("%s's rbd-fuse (pid %d) ended: %v", x.Name, xFuse, err)
	}
	wstart := time.Now()
	if err := writeX(); err == nil {
		t.Errorf("a write through %s's still-running client %s succeeded after the fencing", x.Name, xLoop)
	} else {
		t.Logf("a write through %s's client fails in %s: %v", x.Name, time.Since(wstart).Round(time.Millisecond), err)
	}

	// Swarm keeps the removed node's publish status for good: "unpublished"
	// is from every node of the swarm.
	unpublished := func() {
		t.Helper()
		e.waitVolume("fence-vol", 60*time.Second, "unpublished from the swarm's nodes", func(v *harness.Volume) bool {
			if v.ClusterVolume == nil {
				return false
			}
			for _, p := range v.ClusterVolume.PublishStatus {
				if p.NodeID != tk.NodeID {
					return false
				}
			}
			return true
		})
	}
	// Remounted on the new node: both files are whole.
	e.docker("service", "rm", "fence-app")
	unpublished()
	e.service("fence-read", "sha256sum /data/blob /data/after > /tmp/sums", "--mount", "type=cluster,src=fence-vol,dst=/data",
		"--constraint", "node.role==worker")
	tk3 := e.waitRunning("fence-read", 120*time.Second)
	var sums string
	for deadline := time.Now().Add(30 * time.Second); sums == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, _ := ids[tk3.NodeID].Docker(e.ctx, "exec", tk3.Status.ContainerStatus.ContainerID, "cat", "/tmp/sums")
		sums = strings.TrimSpace(out)
	}
	if !strings.Contains(sums, sum+"  /data/blob") || !strings.Contains(sums, after+"  /data/after") {
		t.Errorf("after a remount the volume holds:\n%s\nwant blob %s and after %s", sums, sum, after)
	}
	e.docker("service", "rm", "fence-read")
	unpublished()
	// That publish status keeps docker volume rm refusing the volume as
	// in use: --force, then the orphaned image goes with rm-orphan.
	e.docker("volume", "rm", "--force", "fence-vol")
	e.mu.Lock()
	e.volumes = slices.DeleteFunc(e.volumes, func(n string) bool { return n == "fence-vol" })
	e.mu.Unlock()
	e.waitVolumeGone("fence-vol", 30*time.Second)
	o.want(0, "deleted "+vid, "volume", "rm-orphan", vid)
	t.Logf("fencing scenario done %s after the start", time.Since(start).Round(time.Millisecond))
}

// rbdFusePIDs returns the rbd-fuse processes of an image in a node's
// network namespace.
func rbdFusePIDs(t *testing.T, n *harness.Node, image string) []int {
	t.Helper()
	want, err := os.Stat(filepath.Join("/run/netns", n.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, p := range harness.ListProcs() {
		if p.Comm != "rbd-fuse" || !slices.Contains(strings.Fields(p.Cmdline), image) {
			continue
		}
		if ns, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid)); err == nil && os.SameFile(ns, want) {
			out = append(out, p.Pid)
		}
	}
	return out
}

// endClient ends a lost node's rbd-fuse and detaches its loop device. The
// harness ends the node's processes, but the loop device's file is then
// on no mount of the run's, and it would stay attached. The rbd-fuse goes
// first: blocklisted, it never answers a query of its file.
func endClient(t *testing.T, pid int, loop, image string) {
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if slices.Contains(strings.Split(string(cmd), "\x00"), image) {
		syscall.Kill(pid, syscall.SIGKILL)
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	}
	file, err := os.ReadFile(filepath.Join("/sys/block", path.Base(loop), "loop", "backing_file"))
	if err != nil || !strings.Contains(string(file), image) {
		return // detached already
	}
	// Still in use by the node's filesystem, the device goes when that
	// does (autoclear), as the harness ends the node's plugin.
	if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
		t.Errorf("detach %s of the lost node's client: %v: %s", loop, err, out)
	}
}
