package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// mountKey names a mount independently of which process shows it.
func mountKey(m harness.VolumeMount) string {
	kind := "container"
	switch {
	case m.Where == "host":
		kind = "host"
	case strings.Contains(m.Where, "(swarm-csi)"):
		kind = "plugin"
	}
	return kind + " " + m.MountPoint
}

// checkSingleUse fails if the volume is attached more than once, or is
// mounted somewhere more often than in the baseline (the first use):
// after restarts the driver must find its loop device and mounts again
// instead of adding new ones. (On the host each publish shows twice at the
// same path when / is a shared mount: Docker's propagated mount is a bind
// in the same peer group as its parent. The baseline absorbs that.)
func (e *env) checkSingleUse(vid, when string, baseline map[string]int) map[string]int {
	e.t.Helper()
	u := e.usage(vid)
	e.t.Logf("%s:\n%s", when, u)
	if len(u.Loops) != 1 {
		e.t.Errorf("%s: %d loop devices back %s, want 1 (leaked or missing):\n%s", when, len(u.Loops), vid, u)
	}
	counts := map[string]int{}
	for _, m := range u.Mounts {
		counts[mountKey(m)]++
	}
	if baseline == nil {
		return counts
	}
	for k, n := range counts {
		if n > baseline[k] {
			e.t.Errorf("%s: %s is mounted %d times at %s, %d times at first (duplicate mounts):\n%s", when, vid, n, k, baseline[k], u)
		}
	}
	return counts
}

// usable checks that the task's /data is the volume, holds the data
// written first (sum) and takes a write.
func (e *env) usable(tk harness.Task, vid, sum, when string) {
	e.t.Helper()
	e.checkOnVolume(tk, vid, "/data")
	if got := strings.Fields(e.exec(tk, "sha256sum /data/blob 2>&1 || true") + " -")[0]; got != sum {
		e.t.Fatalf("%s: /data/blob reads sha256 %s, want %s", when, got, sum)
	}
	token := fmt.Sprintf("%d", time.Now().UnixNano())
	if got := e.exec(tk, "echo "+token+" > /data/probe && sync && cat /data/probe"); got != token {
		e.t.Fatalf("%s: wrote %s to the volume, read %q", when, token, got)
	}
}

// serviceWithData creates volume name and service name-svc, which writes
// a blob to it; it returns the volume's id, the running task, the blob's
// sha256 and the volume's mounts then (the baseline of checkSingleUse).
func (e *env) serviceWithData(name, when string) (vid string, tk harness.Task, sum string, baseline map[string]int) {
	e.t.Helper()
	e.createVolume(name, "--type", "mount")
	v, _ := e.waitCreated(name, 60*time.Second)
	vid = v.VolumeID()
	e.service(name+"-svc", writeScript, "--mount", "type=cluster,src="+name+",dst=/data")
	tk = e.waitRunning(name+"-svc", 90*time.Second)
	sum = strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]
	return vid, tk, sum, e.checkSingleUse(vid, when, nil)
}

// Scenario 7a: docker plugin disable/enable while a service holds a
// volume. The running task keeps its volume, and a new task of the service
// (docker service update --force) gets the volume, with its data, no
// duplicate mounts and no leaked loop device.
func TestPluginDisableEnable(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	vid, tk, sum, baseline := e.serviceWithData("s7-plugin", "before the plugin restart")

	pidBefore, _ := e.n.PluginPID(e.ctx)
	out, err := e.n.Docker(e.ctx, "plugin", "disable", harness.PluginName)
	if err != nil {
		t.Logf("docker plugin disable refused while a volume is in use (%s); using --force", strings.TrimSpace(out))
		e.docker("plugin", "disable", "--force", harness.PluginName)
	} else {
		t.Logf("docker plugin disable accepted while a volume is in use")
	}
	e.docker("plugin", "enable", harness.PluginName)
	pidAfter, err := e.n.PluginPID(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plugin restarted: swarm-csi pid %d -> %d", pidBefore, pidAfter)
	tk = e.waitRunning("s7-plugin-svc", 60*time.Second)
	e.usable(tk, vid, sum, "the running task after plugin disable/enable")
	e.checkSingleUse(vid, "after plugin disable/enable", baseline)

	// A new task: Swarm's agent still counts the volume as published on
	// this node, so whatever it sends, the new container must get the
	// volume, not the empty directory Docker left when it unmounted the
	// plugin's propagated mounts at disable.
	logFrom := e.n.LogSize()
	e.docker("service", "update", "--detach", "--force", "s7-plugin-svc")
	tk = e.waitNewTask("s7-plugin-svc", tk.ID, 90*time.Second)
	log, _ := e.n.LogSince(logFrom)
	t.Logf("RPCs for the new task: NodeUnpublishVolume %d, NodeUnstageVolume %d, NodeStageVolume %d, NodePublishVolume %d",
		countRPC(log, "NodeUnpublishVolume"), countRPC(log, "NodeUnstageVolume"), countRPC(log, "NodeStageVolume"), countRPC(log, "NodePublishVolume"))
	e.usable(tk, vid, sum, "a new task after plugin disable/enable")
	e.checkSingleUse(vid, "a new task after plugin disable/enable", baseline)

	e.removeService("s7-plugin-svc")
	released := e.waitReleased(vid, 30*time.Second)
	t.Logf("released %s after the service was gone: no loop device, no mount", released.Round(time.Millisecond))
}

// Scenario 7b: a dockerd restart while a service holds a volume: the
// task is replaced, its volume is usable, with no duplicate mounts and no
// leaked loop device.
func TestDaemonRestart(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	vid, tk, sum, baseline := e.serviceWithData("s7-daemon", "before the daemon restart")

	logFrom := e.n.LogSize()
	start := time.Now()
	if err := e.n.RestartDaemon(e.ctx); err != nil {
		t.Fatalf("restart dockerd: %v", err)
	}
	t.Logf("dockerd restarted in %s", time.Since(start).Round(time.Millisecond))
	old := tk.ID
	tk, ok := e.tryNewTask("s7-daemon-svc", old, 60*time.Second)
	log, _ := e.n.LogSince(logFrom)
	if !ok {
		// SwarmKit race, seen here once in five runs: the restarted
		// agent publishes the volume for the replacement task, then
		// unpublishes it as it fails the old task ("No such container"),
		// the manager ControllerUnpublishes it, and the new task waits in
		// Preparing for a volume nobody publishes again. Not the driver's
		// doing (it answered every call); a user kicks the service.
		t.Logf("no new task 60s after the restart; Swarm unpublished the volume behind the replacement task "+
			"(agent: %d x \"attempting to unpublish volume\", driver: NodeUnpublishVolume %d, ControllerUnpublishVolume %d):\n%s",
			strings.Count(log, "attempting to unpublish volume"), countRPC(log, "NodeUnpublishVolume"), countRPC(log, "ControllerUnpublishVolume"),
			e.servicePS("s7-daemon-svc"))
		e.docker("service", "update", "--detach", "--force", "s7-daemon-svc")
		tk = e.waitNewTask("s7-daemon-svc", old, 120*time.Second)
		log, _ = e.n.LogSince(logFrom)
	}
	t.Logf("a new task runs %s after the restart began", time.Since(start).Round(time.Millisecond))
	t.Logf("RPCs after the restart: NodeUnpublishVolume %d, NodeUnstageVolume %d, NodeStageVolume %d, NodePublishVolume %d",
		countRPC(log, "NodeUnpublishVolume"), countRPC(log, "NodeUnstageVolume"), countRPC(log, "NodeStageVolume"), countRPC(log, "NodePublishVolume"))
	e.usable(tk, vid, sum, "after the daemon restart")
	e.checkSingleUse(vid, "after the daemon restart", baseline)

	e.removeService("s7-daemon-svc")
	released := e.waitReleased(vid, 30*time.Second)
	t.Logf("released %s after the service was gone: no loop device, no mount", released.Round(time.Millisecond))
}

// waitNewTask waits for a running task of the service other than old.
func (e *env) waitNewTask(service, old string, timeout time.Duration) harness.Task {
	e.t.Helper()
	tk, ok := e.tryNewTask(service, old, timeout)
	if !ok {
		e.t.Fatalf("service %s: no new running task after %s:\n%s", service, timeout, e.servicePS(service))
	}
	return tk
}

// tryNewTask is waitNewTask without failing.
func (e *env) tryNewTask(service, old string, timeout time.Duration) (harness.Task, bool) {
	e.t.Helper()
	start := time.Now()
	for {
		ts, err := e.n.Tasks(e.ctx, service)
		if err == nil {
			for _, tk := range ts {
				if tk.ID != old && tk.Status.State == "running" && tk.DesiredState == "running" && tk.Status.ContainerStatus != nil {
					return tk, true
				}
			}
		}
		if time.Since(start) > timeout {
			return harness.Task{}, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}
