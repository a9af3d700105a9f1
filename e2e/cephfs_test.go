package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// cephfsWriter: each replica writes a file of its own, then appends a
// numbered line to one shared file every 100 ms through lockappend (a
// POSIX lock, a stat, the write and an fsync: O_APPEND alone loses lines
// between ceph-fuse clients). The first failed write ends the container
// with status 1, and Swarm starts the replica again.
const cephfsWriter = `echo "$SLOT $NODE" > /data/own-$SLOT && sync || exit 1; ` +
	`/tools/lockappend /data/shared.log "$SLOT $NODE $TASK" 100ms & wait $! || exit 1`

// cephfsLine is one line of shared.log: slot, node, task id, sequence number.
var cephfsLine = regexp.MustCompile(`^([0-9]+) (node[0-9]+) ([a-z0-9]+) ([0-9]+)$`)

// TestCephFSSharedVolume: the cephfs backend (the plugin's Ceph flavour,
// mounting through ceph-fuse) on a swarm of four nodes, against a
// throwaway Ceph cluster with one MDS in the manager's network namespace.
// A --scope multi --sharing all volume of 64 MiB is used by three
// replicas, at most one per node, each writing its own file and appending
// lines to one shared file; every replica sees every file and every line.
// Draining a node moves its replica to the fourth node: the two others
// keep writing, the moved one sees it all, and the drained node's
// ceph-fuse ends. A ceph-fuse killed with -9 under a replica: the replica
// fails, starts again on its node with the volume mounted again, and no
// line of any node is lost. A --scope multi --sharing readonly volume is
// mounted read-only by ceph-fuse and in every container of a global
// service. A writer past the quota gets "Disk quota exceeded". Once the
// services are gone no ceph-fuse and no mount is left on any node, and the
// removed volumes' subvolumes are gone.
func TestCephFSSharedVolume(t *testing.T) {
	requireSwarm(t)
	testenv.Require(t, cephtest.MissingFS())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, cl := startCephSwarm(t, ctx, 4, cephfsBackend)
	t.Logf("four-node cephfs swarm up in %s (ceph with an MDS up in %s on %s)", time.Since(start).Round(time.Millisecond),
		cl.StartTime.Round(time.Millisecond), cl.MonHost)
	e := newEnv(t, c)
	t.Cleanup(func() {
		if t.Failed() {
			e.containerLogs("fs-app", "fs-quota")
		}
	})
	tools := filepath.Join(c.Root, "cephfs-tools")
	if err := harness.BuildCommand(e.ctx, "./e2e/internal/lockappend", filepath.Join(tools, "lockappend")); err != nil {
		t.Fatal(err)
	}
	toolsMount := "type=bind,src=" + tools + ",dst=/tools,readonly"

	created := time.Now()
	e.createVolume("fs-shared", "--type", "mount", "--scope", "multi", "--sharing", "all", "--limit-bytes", "64M")
	v, _ := e.waitCreated("fs-shared", 60*time.Second)
	vid := v.VolumeID()
	t.Logf("volume fs-shared (%s) created %s after docker volume create", vid, time.Since(created).Round(time.Millisecond))
	if got := v.ClusterVolume.Info.CapacityBytes; got != 64<<20 {
		t.Errorf("fs-shared has CapacityBytes %d, want 64 MiB", got)
	}

	// Three replicas, one per node: each sees every file and every line.
	running := time.Now()
	// Swarm's default restart delay (5 s): with a shorter one, the task
	// that replaces the killed writer below can start while Swarm is still
	// unpublishing the volume from that node for the failed task; the
	// Engine then rejects it (stat of the published path: ENOTCONN) and
	// Swarm leaves its successor Preparing, never publishing the volume
	// there again (seen with 1 s).
	e.service("fs-app", cephfsWriter, "--replicas", "3", "--replicas-max-per-node", "1",
		"--env", "SLOT={{.Task.Slot}}", "--env", "NODE={{.Node.Hostname}}", "--env", "TASK={{.Task.ID}}",
		"--mount", "type=cluster,src=fs-shared,dst=/data", "--mount", toolsMount)
	tasks := e.waitRunningN("fs-app", 3, 120*time.Second)
	onNode := map[*harness.Node]harness.Task{}
	for _, tk := range tasks {
		onNode[e.nodeOf(tk)] = tk
	}
	if len(onNode) != 3 {
		t.Fatalf("the three replicas run on %d nodes, want one on each:\n%s", len(onNode), e.servicePS("fs-app"))
	}
	t.Logf("three replicas running %s after service create", time.Since(running).Round(time.Millisecond))
	time.Sleep(time.Second)
	seen := map[string]int{}
	for _, tk := range tasks {
		seen = e.checkCephFSView(tk, tasks, seen)
	}
	t.Logf("each replica sees the three own files and every line of all three in shared.log (%s)", lineSummary(seen))

	// Drain a worker with a replica: it moves to the idle node.
	var idle, drained *harness.Node
	for _, n := range c.Nodes {
		if _, ok := onNode[n]; !ok {
			idle = n
		} else if n != c.Manager() && drained == nil {
			drained = n
		}
	}
	moving := onNode[drained]
	var staying []harness.Task
	for n, tk := range onNode {
		if n != drained {
			staying = append(staying, tk)
		}
	}
	before := e.cephfsLines(staying[0])
	moveStart := time.Now()
	e.docker("node", "update", "--availability", "drain", drained.Name)
	t.Cleanup(func() {
		c.Manager().Docker(context.Background(), "node", "update", "--availability", "active", drained.Name)
	})
	moved := e.waitSlotAgain("fs-app", moving, 120*time.Second)
	if to := e.nodeOf(moved); to != idle {
		t.Fatalf("drained %s: replica %d runs on %s, want the idle %s", drained.Name, moved.Slot, to.Name, idle.Name)
	}
	t.Logf("drained %s: replica %d runs on %s %s later", drained.Name, moved.Slot, idle.Name, time.Since(moveStart).Round(time.Millisecond))
	gone := e.waitNoCephFuse(drained, 30*time.Second)
	t.Logf("%s's ceph-fuse and mounts were gone %s after that", drained.Name, gone.Round(time.Millisecond))
	e.checkStillRunning("fs-app", staying)
	time.Sleep(time.Second)
	tasks = append(slices.Clone(staying), moved)
	seen = e.checkCephFSView(moved, append(tasks, moving), seen)
	after := e.cephfsLines(staying[0])
	for _, tk := range staying {
		if after[tk.ID] <= before[tk.ID] {
			t.Errorf("replica %d appended nothing during the drain: %d lines before, %d after", tk.Slot, before[tk.ID], after[tk.ID])
		}
	}
	t.Logf("the two other replicas kept appending (%s); the moved replica sees every line", lineSummary(after))

	// Kill -9 the ceph-fuse under a replica that has run since the start.
	// Its node is the only one where the replica may start again: the
	// others run one each, and the drained one takes none.
	victim, old := e.nodeOf(staying[0]), staying[0]
	others := []harness.Task{staying[1], moved}
	fuse := cephFusePIDs(t, victim, vid)
	if len(fuse) != 1 {
		t.Fatalf("%s: want one ceph-fuse for %s, have %v", victim.Name, vid, fuse)
	}
	before = e.cephfsLines(others[0])
	logStart := victim.LogSize()
	killed := time.Now()
	if err := syscall.Kill(fuse[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var healed, restarted, writing time.Duration
	var again harness.Task
	for deadline := killed.Add(90 * time.Second); writing == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: replica %d not writing again 90 s after its ceph-fuse was killed (healed %s, restarted %s):\n%s\n%s",
				victim.Name, old.Slot, healed, restarted, e.servicePS("fs-app"), e.pluginLogSince(victim))
		}
		if log, _ := victim.LogSince(logStart); healed == 0 && strings.Contains(log, "volume mounted again") {
			healed = time.Since(killed)
		}
		if restarted == 0 {
			if tk, ok := e.slotRunning("fs-app", old); ok {
				restarted, again = time.Since(killed), tk
			}
			continue
		}
		if e.cephfsLines(again)[again.ID] > 0 {
			writing = time.Since(killed)
		}
	}
	if n := e.nodeOf(again); n != victim {
		t.Fatalf("replica %d started again on %s, not on %s", old.Slot, n.Name, victim.Name)
	}
	log, _ := victim.LogSince(logStart)
	how := "the new task's publish mounted the volume again"
	if healed > 0 {
		how = fmt.Sprintf("the mount check mounted the volume again %s later", healed.Round(time.Millisecond))
	}
	t.Logf("killed %s's ceph-fuse (pid %d) under replica %d: its writer failed, %s; the replica ran again on %s %s later, "+
		"reading and writing %s later; plugin: %s", victim.Name, fuse[0], old.Slot, how, victim.Name, restarted.Round(time.Millisecond),
		writing.Round(time.Millisecond), strings.Join(linesWith(log, "dead mount", "evicted", "mounted again"), " | "))
	// The killed writer's lines: all it fsynced, and maybe the one in flight.
	out, _ := victim.Docker(e.ctx, "logs", old.Status.ContainerStatus.ContainerID)
	var failedAt int
	if m := regexp.MustCompile(`lockappend: line ([0-9]+): `).FindStringSubmatch(out); m != nil {
		failedAt, _ = strconv.Atoi(m[1])
	} else {
		t.Errorf("the killed replica's writer did not report its failed write:\n%s", out)
	}
	t.Logf("the killed replica's writer: %s", strings.TrimSpace(out))
	e.checkStillRunning("fs-app", others)
	tasks = append(slices.Clone(others), again)
	all := append(slices.Clone(tasks), moving, old)
	time.Sleep(time.Second)
	for _, tk := range tasks {
		seen = e.checkCephFSView(tk, all, seen)
	}
	if n := seen[old.ID]; n < failedAt || n > failedAt+1 {
		t.Errorf("the killed replica's writer wrote %d lines before its failure, shared.log holds %d", failedAt, n)
	}
	for _, tk := range others {
		if seen[tk.ID] <= before[tk.ID] {
			t.Errorf("replica %d appended nothing after the kill: %d lines before, %d after", tk.Slot, before[tk.ID], seen[tk.ID])
		}
	}
	t.Logf("no line lost: %s", lineSummary(seen))
	e.docker("node", "update", "--availability", "active", drained.Name)

	// Read-only sharing: ceph-fuse mounts read-only on every node.
	e.createVolume("fs-ro", "--type", "mount", "--scope", "multi", "--sharing", "readonly")
	ro, _ := e.waitCreated("fs-ro", 60*time.Second)
	// One replica per node. (A global service's tasks on a new volume
	// stay "Preparing": Swarm's agents unpublish it instead of staging it.)
	e.service("fs-ro-app", "ls /data >/dev/null", "--replicas", fmt.Sprint(len(c.Nodes)), "--replicas-max-per-node", "1",
		"--mount", "type=cluster,src=fs-ro,dst=/data,readonly")
	for _, tk := range e.waitRunningN("fs-ro-app", len(c.Nodes), 120*time.Second) {
		n := e.nodeOf(tk)
		if out := e.exec(tk, "touch /data/x 2>&1 || true"); !strings.Contains(out, "Read-only file system") {
			t.Errorf("on %s a write to the read-only volume: %q", n.Name, out)
		}
		for _, p := range cephFuseProcs(t, n, ro.VolumeID()) {
			if !strings.Contains(" "+p.Cmdline+" ", " -o ro ") {
				t.Errorf("on %s the read-only volume's ceph-fuse mounts read-write: %s", n.Name, p.Cmdline)
			}
		}
		if len(cephFuseProcs(t, n, ro.VolumeID())) != 1 {
			t.Errorf("on %s want one ceph-fuse for the read-only volume", n.Name)
		}
	}
	t.Logf("fs-ro: read-only in the containers on all %d nodes, each node's ceph-fuse mounting it with -o ro", len(c.Nodes))

	// The quota, once the writers are gone: the volume holds every line.
	e.removeService("fs-app")
	e.waitUnpublished("fs-shared", 90*time.Second)
	e.service("fs-quota", "dd if=/dev/zero of=/data/big bs=1M count=128 conv=fsync 2>/tmp/dd.err; echo $? > /tmp/dd.rc",
		"--mount", "type=cluster,src=fs-shared,dst=/data", "--mount", toolsMount)
	q := e.waitRunning("fs-quota", 120*time.Second)
	e.waitFile(q, "/tmp/dd.rc", 120*time.Second)
	if out := e.exec(q, "cat /tmp/dd.rc /tmp/dd.err"); !strings.Contains(out, "Disk quota exceeded") || strings.HasPrefix(out, "0") {
		t.Errorf("dd of 128 MiB into the 64 MiB volume: %s", out)
	} else {
		t.Logf("dd of 128 MiB into the 64 MiB volume: %s (wrote %s bytes)", strings.Join(strings.Fields(out), " "), e.exec(q, "stat -c %s /data/big"))
	}
	final := e.checkCephFSView(q, all, seen)
	t.Logf("after the writers stopped shared.log holds %s", lineSummary(final))

	e.removeService("fs-quota")
	e.removeService("fs-ro-app")
	removed := time.Now()
	e.waitUnpublished("fs-shared", 90*time.Second)
	e.waitUnpublished("fs-ro", 90*time.Second)
	for _, n := range c.Nodes {
		e.waitNoCephFuse(n, 30*time.Second)
	}
	t.Logf("services removed: no ceph-fuse and no mount left on any node %s later", time.Since(removed).Round(time.Millisecond))
	for _, name := range []string{"fs-shared", "fs-ro"} {
		if err := e.removeVolume(name, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		e.waitVolumeGone(name, 60*time.Second)
	}
	subs, err := cl.Admin(e.ctx, "ceph", "fs", "subvolume", "ls", cl.FS, "--group_name", "swarm-csi")
	if err != nil || strings.Contains(string(subs), "vol-") {
		t.Errorf("subvolumes left after the volumes' removal: %v %s", err, subs)
	}
	t.Logf("cephfs scenario done %s after the start", time.Since(start).Round(time.Millisecond))
}

// cephFuseProcs returns the ceph-fuse processes in a node's network
// namespace (its plugin's) whose command line names the volume: the
// driver's mounts carry the node and volume as client metadata.
func cephFuseProcs(t *testing.T, n *harness.Node, volumeID string) []harness.ProcInfo {
	t.Helper()
	want, err := os.Stat(filepath.Join("/run/netns", n.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	var out []harness.ProcInfo
	for _, p := range harness.ListProcs() {
		if p.Comm != "ceph-fuse" || !strings.Contains(p.Cmdline, volumeID) {
			continue
		}
		if ns, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid)); err == nil && os.SameFile(ns, want) {
			out = append(out, p)
		}
	}
	return out
}

func cephFusePIDs(t *testing.T, n *harness.Node, volumeID string) []int {
	var pids []int
	for _, p := range cephFuseProcs(t, n, volumeID) {
		pids = append(pids, p.Pid)
	}
	return pids
}

// waitNoCephFuse waits until a node runs no ceph-fuse and has no ceph-fuse
// mount, in its plugin's mount namespace or on the host.
func (e *env) waitNoCephFuse(n *harness.Node, timeout time.Duration) time.Duration {
	e.t.Helper()
	pid, err := n.PluginPID(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	root, err := n.PluginMountsRoot(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	start := time.Now()
	for {
		left := fmt.Sprint(cephFusePIDs(e.t, n, ""))
		if left == "[]" {
			left = ""
		}
		for _, f := range []string{fmt.Sprintf("/proc/%d/mountinfo", pid), "/proc/self/mountinfo"} {
			ms, err := harness.ReadMountinfo(f)
			if err != nil {
				e.t.Fatal(err)
			}
			for _, m := range ms {
				if m.FSType == "fuse.ceph-fuse" && (f != "/proc/self/mountinfo" || strings.HasPrefix(m.MountPoint, root+"/")) {
					left += fmt.Sprintf(" %s in %s", m.MountPoint, f)
				}
			}
		}
		if left == "" {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("%s: ceph-fuse still there %s later: %s", n.Name, timeout, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slotRunning returns the running task of old's slot that is not old.
func (e *env) slotRunning(service string, old harness.Task) (harness.Task, bool) {
	ts, _ := e.n.Tasks(e.ctx, service)
	for _, tk := range ts {
		if tk.Slot == old.Slot && tk.ID != old.ID && tk.Status.State == "running" && tk.DesiredState == "running" && tk.Status.ContainerStatus != nil {
			return tk, true
		}
	}
	return harness.Task{}, false
}

// waitSlotAgain waits for old's slot to run in a new task.
func (e *env) waitSlotAgain(service string, old harness.Task, timeout time.Duration) harness.Task {
	e.t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		if tk, ok := e.slotRunning(service, old); ok {
			return tk
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("replica %d did not run again in a new task within %s:\n%s", old.Slot, timeout, e.servicePS(service))
		}
	}
}

// cephfsLines reads shared.log in the task and counts the lines of each
// writer (task id). A line that is not whole, or a writer's line out of
// sequence (one lost or written twice), fails the test. It reads under a
// shared lock, as a reader of a file other nodes append to must: without
// one, cat may see the end of a line being appended (a write across a
// page boundary reaches the file in two parts), or stale pages.
func (e *env) cephfsLines(tk harness.Task) map[string]int {
	e.t.Helper()
	counts := map[string]int{}
	for _, l := range strings.Split(e.exec(tk, "/tools/lockappend -cat /data/shared.log"), "\n") {
		m := cephfsLine.FindStringSubmatch(l)
		if m == nil {
			e.t.Errorf("shared.log as replica %d reads it has a torn line %q", tk.Slot, l)
			continue
		}
		if n, _ := strconv.Atoi(m[4]); n != counts[m[3]] {
			e.t.Errorf("shared.log as replica %d reads it: line %q follows %d lines of its writer", tk.Slot, l, counts[m[3]])
		}
		counts[m[3]]++
	}
	return counts
}

// checkCephFSView checks that a replica sees the own file of each slot of
// writers, lines of each writer, and at least as many of each as seen
// before (no line lost); it returns the counts.
func (e *env) checkCephFSView(tk harness.Task, writers []harness.Task, seen map[string]int) map[string]int {
	e.t.Helper()
	var own []string
	for _, w := range writers {
		own = append(own, fmt.Sprintf("/data/own-%d", w.Slot))
	}
	slices.Sort(own)
	own = slices.Compact(own)
	out := e.exec(tk, "cat "+strings.Join(own, " "))
	if got := len(strings.Split(out, "\n")); got != len(own) {
		e.t.Errorf("replica %d sees %d own files, want %d:\n%s", tk.Slot, got, len(own), out)
	}
	counts := e.cephfsLines(tk)
	for _, w := range writers {
		if counts[w.ID] == 0 || counts[w.ID] < seen[w.ID] {
			e.t.Errorf("replica %d sees %d lines of task %s (replica %d), %d were seen before", tk.Slot, counts[w.ID], w.ID, w.Slot, seen[w.ID])
		}
	}
	return counts
}

// lineSummary is "N lines from W writers".
func lineSummary(counts map[string]int) string {
	total := 0
	for _, n := range counts {
		total += n
	}
	return fmt.Sprintf("%d lines from %d writers", total, len(counts))
}

// linesWith returns the lines of log holding any of subs, shortened to
// their message.
func linesWith(log string, subs ...string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				if i := strings.Index(l, "msg="); i >= 0 {
					l = l[i:]
				}
				out = append(out, shorten(l, 200))
				break
			}
		}
	}
	return out
}

// containerLogs logs the output of every container of the services, on
// every node: what a writer said when it failed.
func (e *env) containerLogs(services ...string) {
	for _, n := range e.c.Nodes {
		for _, s := range services {
			out, _ := n.Docker(e.ctx, "ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+s)
			for _, id := range strings.Fields(out) {
				log, _ := n.Docker(e.ctx, "logs", id)
				e.t.Logf("[%s] docker logs %s (%s):\n%s", n.Name, id, s, log)
			}
		}
	}
}
