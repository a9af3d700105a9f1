package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// groupScript: a replica claims an unclaimed volume (writes its slot and 4
// MiB with fsync), and every replica that mounts a volume notes its slot.
const groupScript = `test -f /data/owner || { dd if=/dev/urandom of=/data/blob bs=1M count=4 conv=fsync 2>/dev/null && ` +
	`sha256sum /data/blob > /data/blob.sum && echo $SLOT > /data/owner && sync; }; echo $SLOT >> /data/mounts; sync`

// waitRunningN waits until n tasks of the service run, and returns them.
func (e *env) waitRunningN(service string, n int, timeout time.Duration) []harness.Task {
	e.t.Helper()
	start := time.Now()
	for {
		ts, err := e.n.Tasks(e.ctx, service)
		var running []harness.Task
		for _, tk := range ts {
			if tk.Status.State == "running" && tk.DesiredState == "running" && tk.Status.ContainerStatus != nil {
				running = append(running, tk)
			}
		}
		if err == nil && len(running) == n {
			sort.Slice(running, func(i, j int) bool { return running[i].Slot < running[j].Slot })
			return running
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("service %s: %d tasks running after %s, want %d: %v\n%s", service, len(running), timeout, n, err, e.servicePS(service))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// volumeState is what a replica finds on its volume.
type volumeState struct{ device, owner, sum, mounts string }

func (e *env) volumeOf(tk harness.Task) volumeState {
	e.t.Helper()
	e.waitFile(tk, "/data/owner", 60*time.Second)
	return volumeState{
		device: strings.Fields(e.exec(tk, "grep ' /data ' /proc/mounts") + " ?")[0],
		owner:  e.exec(tk, "cat /data/owner"),
		sum:    e.exec(tk, "sha256sum /data/blob | cut -d' ' -f1; cut -d' ' -f1 /data/blob.sum"),
		mounts: e.exec(tk, "tr '\\n' ' ' < /data/mounts"),
	}
}

// inUse counts the group's volumes Swarm shows published somewhere.
func (e *env) inUse(names []string) int {
	n := 0
	for _, name := range names {
		if v, _ := e.inspectVolume(name); v.ClusterVolume != nil && len(v.ClusterVolume.PublishStatus) > 0 {
			n++
		}
	}
	return n
}

// Volume groups: three volumes in group vg and a service of three
// replicas mounting src=group:vg. Each replica gets a volume of its own;
// scaled to 1 and back to 3, every volume still holds what its first
// writer wrote. A fourth replica finds the group exhausted and waits,
// with Swarm's message, until a volume joins the group.
func TestVolumeGroup(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	names := []string{"vg-1", "vg-2", "vg-3"}
	for _, n := range names {
		e.createVolume(n, "--type", "mount", "--group", "vg", "--required-bytes", "64M")
	}
	for _, n := range names {
		e.waitCreated(n, 60*time.Second)
	}
	e.service("vg-svc", groupScript, "--replicas", "3", "--env", "SLOT={{.Task.Slot}}",
		"--mount", "type=cluster,src=group:vg,dst=/data")
	first := map[string]volumeState{} // by owner
	devices := map[string]bool{}
	for _, tk := range e.waitRunningN("vg-svc", 3, 120*time.Second) {
		st := e.volumeOf(tk)
		if st.owner != fmt.Sprint(tk.Slot) || st.mounts != fmt.Sprint(tk.Slot) {
			t.Errorf("replica %d found owner %q, mounts %q on its volume: another replica wrote it", tk.Slot, st.owner, st.mounts)
		}
		if devices[st.device] {
			t.Errorf("replica %d shares %s with another replica", tk.Slot, st.device)
		}
		devices[st.device] = true
		first[st.owner] = st
		t.Logf("replica %d: volume on %s, written by replica %s", tk.Slot, st.device, st.owner)
	}

	e.docker("service", "scale", "--detach", "vg-svc=1")
	e.waitRunningN("vg-svc", 1, 60*time.Second)
	// Placing a task while its volume is still being unpublished leaves it
	// waiting (README): wait until only one volume is in use.
	for deadline := time.Now().Add(60 * time.Second); e.inUse(names) != 1; time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("scaled to 1, %d of the group's volumes still in use after a minute", e.inUse(names))
		}
	}
	e.docker("service", "scale", "--detach", "vg-svc=3")
	devices = map[string]bool{}
	for _, tk := range e.waitRunningN("vg-svc", 3, 120*time.Second) {
		st := e.volumeOf(tk)
		was, ok := first[st.owner]
		if !ok || st.sum != was.sum {
			t.Errorf("replica %d: volume owned by %q holds sha256 %q, its writer wrote %q", tk.Slot, st.owner, st.sum, was.sum)
		}
		if devices[st.device] {
			t.Errorf("after scaling back, replica %d shares %s with another replica", tk.Slot, st.device)
		}
		devices[st.device] = true
		t.Logf("after scale 1 and back to 3: replica %d has the volume written by replica %s (mounted by replicas %s)", tk.Slot, st.owner, st.mounts)
	}

	// A fourth replica: the group is exhausted.
	e.docker("service", "scale", "--detach", "vg-svc=4")
	var msg string
	for deadline := time.Now().Add(30 * time.Second); msg == ""; time.Sleep(500 * time.Millisecond) {
		ts, _ := e.n.Tasks(e.ctx, "vg-svc")
		for _, tk := range ts {
			if tk.Slot == 4 && tk.DesiredState == "running" && tk.Status.State == "pending" && tk.Status.Err != "" {
				msg = tk.Status.Err
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fourth replica did not wait with a message:\n%s", e.servicePS("vg-svc"))
		}
	}
	t.Logf("the fourth replica waits: docker service ps shows %q", msg)
	e.createVolume("vg-4", "--type", "mount", "--group", "vg", "--required-bytes", "64M")
	start := time.Now()
	e.waitRunningN("vg-svc", 4, 120*time.Second)
	t.Logf("with vg-4 added to the group, the fourth replica ran %s later", time.Since(start).Round(time.Millisecond))
	e.removeService("vg-svc")
}
