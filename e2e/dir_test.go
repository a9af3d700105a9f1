package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// sharedAppendScript: each replica writes a file of its own, then appends
// a numbered line to one shared file every 100 ms, syncing after each.
const sharedAppendScript = `echo "$SLOT $NODE" > /data/own-$SLOT && sync && ` +
	`{ i=0; while :; do echo "$SLOT $NODE $i" >> /data/shared.log; sync; i=$((i+1)); sleep 0.1; done & }`

// sharedLine is one line of shared.log: slot, node, sequence number.
var sharedLine = regexp.MustCompile(`^([0-9]+) (node[0-9]+) ([0-9]+)$`)

// TestDirSharedVolume: the dir backend on three nodes sharing one filesystem (a
// tmpfs mounted at the host directory every node's plugin uses as its data
// directory). A --scope multi --sharing all volume is used by three
// replicas, one per node, each writing its own file and appending to one
// shared file; every replica sees all of it. Draining a node moves its
// replica and stops none of the others. A node whose data directory is an
// empty local directory instead (the shared mount missing) refuses its
// task with FailedPrecondition while the others keep writing. Once the
// services are gone no mount of the volume is left.
func TestDirSharedVolume(t *testing.T) {
	requireSwarm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := harness.Start(ctx, logf, harness.Options{Nodes: 3, Backend: "dir", Setup: func(_ context.Context, c *harness.Cluster) ([]string, error) {
		// The nodes' dockerds share the host's mount namespace: one mount
		// is the filesystem every node mounts. Teardown unmounts it.
		if err := unix.Mount("tmpfs", c.DataDir, "tmpfs", 0, "size=256m,mode=0700"); err != nil {
			return nil, fmt.Errorf("mount the shared tmpfs: %w", err)
		}
		return []string{"BACKEND=dir"}, nil
	}})
	if err != nil {
		t.Fatalf("bring up the three-node swarm: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the three-node swarm left something behind:\n%v", err)
		} else {
			t.Logf("three-node swarm and its shared tmpfs torn down; nothing left behind")
		}
	})
	t.Logf("three-node swarm on a shared tmpfs up in %s", time.Since(start).Round(time.Millisecond))
	e := newEnv(t, c)

	e.createVolume("dir-shared", "--type", "mount", "--scope", "multi", "--sharing", "all")
	v, _ := e.waitCreated("dir-shared", 60*time.Second)
	vid := v.VolumeID()
	if _, raw := e.inspectVolume("dir-shared"); !strings.Contains(raw, `"not enforced"`) {
		t.Errorf("docker volume inspect dir-shared does not say the capacity is not enforced:\n%s", raw)
	}
	e.service("dir-app", sharedAppendScript, "--replicas", "3", "--env", "SLOT={{.Task.Slot}}", "--env", "NODE={{.Node.Hostname}}",
		"--mount", "type=cluster,src=dir-shared,dst=/data")
	tasks := e.waitRunningN("dir-app", 3, 120*time.Second)
	onNode := map[string]harness.Task{}
	for _, tk := range tasks {
		onNode[e.nodeOf(tk).Name] = tk
	}
	if len(onNode) != 3 {
		t.Fatalf("the three replicas run on %d nodes, want one on each:\n%s", len(onNode), e.servicePS("dir-app"))
	}
	e.waitWritten(tasks, []int{1, 2, 3}, 60*time.Second)
	for _, tk := range tasks {
		e.checkSharedView(tk, []int{1, 2, 3})
	}
	t.Logf("three replicas on node1, node2, node3 each see the three own files and the lines of all three in shared.log")

	// Drain a worker: its replica moves, the other two go on.
	drained := c.Nodes[2]
	moving := onNode[drained.Name]
	staying := []harness.Task{onNode[c.Nodes[0].Name], onNode[c.Nodes[1].Name]}
	before := e.lineCounts(staying[0])
	moveStart := time.Now()
	e.docker("node", "update", "--availability", "drain", drained.Name)
	t.Cleanup(func() {
		c.Manager().Docker(context.Background(), "node", "update", "--availability", "active", drained.Name)
	})
	moved := e.waitReplicaMoved("dir-app", moving, drained, 120*time.Second)
	to := e.nodeOf(moved)
	t.Logf("drained %s: replica %d runs on %s %s later", drained.Name, moved.Slot, to.Name, time.Since(moveStart).Round(time.Millisecond))
	if to == drained {
		t.Fatalf("replica %d still runs on the drained %s", moved.Slot, drained.Name)
	}
	e.checkStillRunning("dir-app", staying)
	time.Sleep(time.Second)
	e.checkSharedView(moved, []int{1, 2, 3})
	after := e.lineCounts(staying[0])
	for _, slot := range []int{staying[0].Slot, staying[1].Slot} {
		if after[slot] <= before[slot] {
			t.Errorf("replica %d appended nothing during the drain: %d lines before, %d after", slot, before[slot], after[slot])
		}
	}

	// The drained node loses its shared mount: its plugin's data directory
	// becomes an empty local directory.
	local := filepath.Join(c.Root, drained.Name, "not-mounted")
	if err := os.MkdirAll(local, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"plugin", "disable", harness.PluginName}, {"plugin", "set", harness.PluginName, "data.source=" + local},
		{"plugin", "enable", harness.PluginName}} {
		if out, err := drained.Docker(e.ctx, args...); err != nil {
			t.Fatalf("on %s: docker %v: %v\n%s", drained.Name, args, err, out)
		}
	}
	e.docker("node", "update", "--availability", "active", drained.Name)
	before = e.lineCounts(staying[0])
	e.service("dir-stray", "true", "--constraint", "node.hostname=="+drained.Name, "--mount", "type=cluster,src=dir-shared,dst=/data")
	refused := ""
	for deadline := time.Now().Add(90 * time.Second); refused == ""; time.Sleep(time.Second) {
		for _, l := range strings.Split(e.pluginLogSince(drained), "\n") {
			// The plugin names the data directory as it sees it.
			if strings.Contains(l, "code=FailedPrecondition") && strings.Contains(l, "/var/lib/swarm-csi is on the root filesystem") {
				refused = l
			}
		}
		if refused == "" && time.Now().After(deadline) {
			t.Fatalf("%s's plugin did not refuse with FailedPrecondition naming its data directory:\n%s\n%s", drained.Name, e.servicePS("dir-stray"), e.pluginLogSince(drained))
		}
	}
	if i := strings.Index(refused, "error="); i >= 0 {
		refused = refused[i:]
	}
	t.Logf("%s without its shared mount refuses NodeStageVolume: %s", drained.Name, refused)
	time.Sleep(3 * time.Second)
	if ts, _ := e.n.Tasks(e.ctx, "dir-stray"); len(ts) > 0 {
		for _, tk := range ts {
			if tk.Status.State == "running" {
				t.Errorf("a task on %s without its shared mount runs: %+v", drained.Name, tk)
			}
		}
	}
	if entries, err := os.ReadDir(filepath.Join(local, "dir", "volumes")); err != nil || len(entries) != 0 {
		t.Errorf("%s's local directory got volume data: %v %v", drained.Name, entries, err)
	}
	e.checkStillRunning("dir-app", []harness.Task{staying[0], staying[1], moved})
	after = e.lineCounts(staying[0])
	for _, slot := range []int{1, 2, 3} {
		if after[slot] <= before[slot] {
			t.Errorf("replica %d appended nothing while %s refused: %d lines before, %d after", slot, drained.Name, before[slot], after[slot])
		}
	}

	e.removeService("dir-stray")
	e.removeService("dir-app")
	d := e.waitUnpublished("dir-shared", 90*time.Second)
	t.Logf("services removed; the volume is unpublished from every node %s later", d.Round(time.Millisecond))
	ms, err := harness.ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.Contains(m.Root, vid) {
			t.Errorf("left behind: a mount of volume %s at %s", vid, m.MountPoint)
		}
	}
}

// checkSharedView checks that a replica sees the own file of each slot and
// lines of each slot in shared.log, every line whole.
func (e *env) checkSharedView(tk harness.Task, slots []int) {
	e.t.Helper()
	var own []string
	for _, s := range slots {
		own = append(own, fmt.Sprintf("/data/own-%d", s))
	}
	out := e.exec(tk, "cat "+strings.Join(own, " "))
	if got := len(strings.Split(out, "\n")); got != len(slots) {
		e.t.Errorf("replica %d sees %d own files, want %d:\n%s", tk.Slot, got, len(slots), out)
	}
	counts := e.lineCounts(tk)
	for _, s := range slots {
		if counts[s] == 0 {
			e.t.Errorf("replica %d sees no line of replica %d in shared.log (counts %v)", tk.Slot, s, counts)
		}
	}
}

// waitWritten waits until every slot's own file and a line of it in
// shared.log are there, as the first of tasks reads them: a running task's
// container may not have started writing yet on a loaded machine.
func (e *env) waitWritten(tasks []harness.Task, slots []int, timeout time.Duration) {
	e.t.Helper()
	tk := tasks[0]
	script := ""
	for _, s := range slots {
		script += fmt.Sprintf("test -e /data/own-%d && grep -q '^%d ' /data/shared.log && ", s, s)
	}
	script += "true"
	start := time.Now()
	for {
		out, err := e.nodeOf(tk).Docker(e.ctx, "exec", tk.Status.ContainerStatus.ContainerID, "sh", "-c", script)
		if err == nil {
			return
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("replicas %v have not all written %s after they run: %v %s", slots, timeout, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// lineCounts reads shared.log in the task and counts the lines of each
// slot; a line that is not whole fails the test.
func (e *env) lineCounts(tk harness.Task) map[int]int {
	e.t.Helper()
	counts := map[int]int{}
	for _, l := range strings.Split(e.exec(tk, "cat /data/shared.log"), "\n") {
		m := sharedLine.FindStringSubmatch(l)
		if m == nil {
			e.t.Errorf("shared.log as replica %d reads it has a torn line %q", tk.Slot, l)
			continue
		}
		s, _ := strconv.Atoi(m[1])
		counts[s]++
	}
	return counts
}

// checkStillRunning checks that the tasks still run, none replaced.
func (e *env) checkStillRunning(service string, want []harness.Task) {
	e.t.Helper()
	ts, err := e.n.Tasks(e.ctx, service)
	if err != nil {
		e.t.Fatal(err)
	}
	running := map[string]bool{}
	for _, tk := range ts {
		if tk.Status.State == "running" {
			running[tk.ID] = true
		}
	}
	var stopped []string
	for _, tk := range want {
		if !running[tk.ID] {
			stopped = append(stopped, fmt.Sprintf("replica %d (%s)", tk.Slot, tk.ID[:12]))
		}
	}
	sort.Strings(stopped)
	if len(stopped) > 0 {
		e.t.Errorf("stopped meanwhile: %s\n%s", strings.Join(stopped, ", "), e.servicePS(service))
	}
}
