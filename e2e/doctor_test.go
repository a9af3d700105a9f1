package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// doctorReport is what swarm-csi doctor --format json prints.
type doctorReport struct {
	OK       bool
	Checked  []string
	Findings []struct{ Level, Check, Subject, Problem, Fix string }
}

// doctor runs swarm-csi doctor --format json and returns its report and
// exit status.
func (o *operatorCLI) doctor() (doctorReport, int, string) {
	o.t.Helper()
	out, code := o.run("--format", "json", "doctor")
	var r doctorReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		o.t.Fatalf("swarm-csi doctor --format json: exit %d, %v:\n%s", code, err, out)
	}
	return r, code, out
}

// waitFinding runs doctor until it fails with a finding on subject whose
// problem and fix contain problem and fix (a volume's CreateVolume is
// retried with backoff, a node is seen down after a while).
func (o *operatorCLI) waitFinding(subject, problem, fix string, timeout time.Duration) {
	o.t.Helper()
	start := time.Now()
	for {
		r, code, out := o.doctor()
		for _, f := range r.Findings {
			if code == 1 && !r.OK && f.Level == "FAIL" && f.Subject == subject && strings.Contains(f.Problem, problem) && strings.Contains(f.Fix, fix) {
				o.t.Logf("doctor, %s later: FAIL %s %s: %s\n     fix: %s", time.Since(start).Round(time.Millisecond), f.Check, f.Subject, f.Problem, f.Fix)
				return
			}
		}
		if time.Since(start) > timeout {
			o.t.Fatalf("doctor: no FAIL on %s with %q and fix %q after %s (exit %d):\n%s", subject, problem, fix, timeout, code, out)
		}
		time.Sleep(time.Second)
	}
}

// TestDoctorAndStuckVolume, on three nodes: swarm-csi doctor passes on a
// healthy swarm and names each fault with its fix: a bad volume (fsType=zfs)
// with the driver's own error, an orphan, and a volume published to a
// stopped node. That volume is the stuck state ("in use" for ever):
// volume release refuses it while the node is only down, and says what to
// do; once the node is removed from the swarm (which leaves the volume in
// use for ever) it releases it, and a service on another node uses it
// again with its data.
func TestDoctorAndStuckVolume(t *testing.T) {
	requireSwarm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := harness.Start(ctx, logf, harness.Options{Nodes: 3, PluginEnv: []string{"METRICS_ADDR=:9464"}})
	if err != nil {
		t.Fatalf("bring up the three-node swarm: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the three-node swarm left something behind:\n%v", err)
		}
	})
	t.Logf("three-node swarm up in %s", time.Since(start).Round(time.Millisecond))
	e := newEnv(t, c)
	o := newOperatorCLI(t, e)
	lost := c.Nodes[2]
	lostID, err := lost.SwarmNodeID(e.ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Healthy: a volume in use on node3.
	e.createVolume("dr-vol", "--type", "mount", "--scope", "single", "--sharing", "none")
	dv, _ := e.waitCreated("dr-vol", 60*time.Second)
	vid := dv.VolumeID()
	e.service("dr-app", "echo written-on-node3 > /data/f && sync", "--mount", "type=cluster,src=dr-vol,dst=/data",
		"--constraint", "node.hostname=="+lost.Name)
	e.waitRunning("dr-app", 120*time.Second)
	// node3's loop device of dr-vol, by the driver's tag: what node3's host
	// keeps when its Engine stops.
	node3Tags := map[string]bool{}
	for _, l := range loopsTagged(t, vid) {
		node3Tags[l.FileName] = true
	}
	step := time.Now()
	r, code, out := o.doctor()
	if code != 0 || !r.OK {
		t.Fatalf("doctor on a healthy swarm: exit %d:\n%s", code, out)
	}
	table := o.want(0, "ok: nothing is wrong", "doctor")
	t.Logf("doctor on the healthy swarm (%s):\n%s", time.Since(step).Round(time.Millisecond), table)

	// A bad volume: pending creation, with the driver's error.
	e.createVolume("dr-zfs", "--type", "mount", "--opt", "fsType=zfs")
	o.waitFinding("dr-zfs", `pending creation: the driver refused it`, "docker volume rm --force dr-zfs", 60*time.Second)
	o.waitFinding("dr-zfs", `InvalidArgument: invalid argument: fsType "zfs" is not supported: use ext4 or xfs`, "", 5*time.Second)
	e.docker("volume", "rm", "--force", "dr-zfs")
	e.waitVolumeGone("dr-zfs", 30*time.Second)

	// An orphan.
	e.createVolume("dr-orphan", "--type", "mount")
	ov, _ := e.waitCreated("dr-orphan", 60*time.Second)
	e.docker("volume", "rm", "--force", "dr-orphan")
	e.waitVolumeGone("dr-orphan", 30*time.Second)
	o.waitFinding(ov.VolumeID(), "a disk no Swarm volume refers to", "swarm-csi volume rm-orphan "+ov.VolumeID(), 10*time.Second)
	o.want(0, "deleted "+ov.VolumeID(), "volume", "rm-orphan", ov.VolumeID())
	o.want(0, "ok: nothing is wrong", "doctor")

	// node3 stops with dr-vol in use there: Swarm counts the volume
	// published to a node that is down.
	if err := lost.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	o.waitFinding("dr-vol", "published to "+lost.Name+" ("+lostID+"), which is down", "docker node rm --force "+lostID, 90*time.Second)

	// The stuck state: the service is gone, the volume stays in use.
	// (Not removeService: it waits on every node, node3 included.)
	e.docker("service", "rm", "dr-app")
	if out, err := e.n.Docker(e.ctx, "volume", "rm", "dr-vol"); err == nil || !strings.Contains(out, "in use") {
		t.Fatalf("docker volume rm of the volume published to the stopped node: %v\n%s", err, out)
	}
	// release cannot ask node3's plugin: it refuses and says what to do.
	refused := o.want(1, "docker node rm --force "+lostID+", then swarm-csi volume release dr-vol again", "volume", "release", "dr-vol")
	t.Logf("volume release: %s", strings.TrimSpace(refused))
	if !strings.Contains(refused, "which is down, so its plugin cannot be asked") {
		t.Errorf("volume release does not say why it refuses:\n%s", refused)
	}
	// The steps it gives: node3 is gone for good. Swarm never unpublishes
	// a volume from a node removed from the swarm: still in use.
	e.docker("node", "rm", "--force", lostID)
	o.waitFinding("dr-vol", "published to node "+lostID+", which is not in the swarm any more", "swarm-csi volume release dr-vol", 30*time.Second)
	if out, err := e.n.Docker(e.ctx, "volume", "rm", "dr-vol"); err == nil || !strings.Contains(out, "in use") {
		t.Fatalf("docker volume rm of the volume published to the removed node: %v\n%s", err, out)
	}
	step = time.Now()
	released := o.want(0, "volume dr-vol released", "volume", "release", "dr-vol")
	t.Logf("volume release (%s):\n%s", time.Since(step).Round(time.Millisecond), released)
	if v, _ := e.inspectVolume("dr-vol"); v.VolumeID() != vid || len(v.ClusterVolume.PublishStatus) != 0 {
		t.Fatalf("after release dr-vol is %s, published to %v; want %s, published nowhere", v.VolumeID(), v.ClusterVolume.PublishStatus, vid)
	}
	o.want(0, "nothing to release", "volume", "release", "dr-vol")

	// Used again, on another node, with its data.
	e.service("dr-again", "true", "--mount", "type=cluster,src=dr-vol,dst=/data", "--constraint", "node.hostname=="+c.Nodes[1].Name)
	tk := e.waitRunning("dr-again", 120*time.Second)
	// On node2 directly: e.exec asks every node, node3 included.
	got, err := c.Nodes[1].Docker(e.ctx, "exec", tk.Status.ContainerStatus.ContainerID, "cat", "/data/f")
	if err != nil || strings.TrimSpace(got) != "written-on-node3" {
		t.Errorf("dr-vol on %s reads %q (%v), want what node3 wrote", c.Nodes[1].Name, got, err)
	}
	e.docker("service", "rm", "dr-again")
	e.waitUnpublished("dr-vol", 60*time.Second)
	// node3 is gone for good, and on a real host its loop device went with
	// it; here the nodes share one kernel: detach it as its host's end
	// would. node2's plugin released its own at the unpublish.
	for _, l := range loopsTagged(t, vid) {
		if !node3Tags[l.FileName] {
			t.Errorf("dr-vol is still attached at %s (%s) after its last unpublish on node2", l.Dev, l.FileName)
			continue
		}
		if out, err := exec.Command("losetup", "-d", l.Dev).CombinedOutput(); err != nil {
			t.Errorf("detach node3's %s: %v %s", l.Dev, err, out)
		}
	}
	if err := e.removeVolume("dr-vol", 60*time.Second); err != nil {
		t.Fatalf("docker volume rm dr-vol once released: %v", err)
	}
	e.waitVolumeGone("dr-vol", 60*time.Second)
	o.want(0, "ok: nothing is wrong", "doctor")
}
