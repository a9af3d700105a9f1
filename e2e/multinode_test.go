package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// overlap is a moment when the volume was mounted for two nodes.
type overlap struct {
	at    time.Duration
	usage harness.Usage
}

// mountWatch samples, every interval, where the volume is mounted, and
// remembers every node it was seen on and every moment it was mounted for
// more than one node at once.
type mountWatch struct {
	samples  int
	seenOn   map[string]bool
	overlaps []overlap
	errs     []error
	timeline []string
}

func watchMounts(ctx context.Context, w *harness.Watcher, interval time.Duration) (*mountWatch, func() *mountWatch) {
	mw := &mountWatch{seenOn: map[string]bool{}}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		last := ""
		for i := 0; ; i++ {
			// New containers have new mount namespaces: look for them
			// every few samples.
			if i%5 == 0 {
				w.Refresh()
			}
			u, err := w.Usage()
			if err != nil {
				mw.errs = append(mw.errs, err)
			} else {
				mw.samples++
				nodes := u.Nodes()
				for _, n := range nodes {
					mw.seenOn[n] = true
				}
				if cur := strings.Join(nodes, ","); cur != last {
					mw.timeline = append(mw.timeline, fmt.Sprintf("%8s mounted for [%s]", time.Since(start).Round(time.Millisecond), cur))
					last = cur
				}
				if len(nodes) > 1 {
					mw.overlaps = append(mw.overlaps, overlap{at: time.Since(start), usage: u})
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval):
			}
		}
	}()
	return mw, func() *mountWatch { cancel(); wg.Wait(); return mw }
}

// Scenario 8: three nodes (a manager and two workers, each dockerd in its
// own network namespace) share one host directory as the plugin's data
// directory. A single-writer volume's service runs on worker A; draining A
// moves the task to worker B, which reads A's data; polling the mounts
// every 20 ms, the volume is never mounted for two nodes at once.
func TestDrainMovesVolumeBetweenNodes(t *testing.T) {
	requireSwarm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := harness.Start(ctx, logf, harness.Options{Nodes: 3, PluginEnv: []string{"METRICS_ADDR=:9464"}})
	if err != nil {
		t.Fatalf("bring up the three-node swarm: %v", err)
	}
	t.Cleanup(func() {
		start := time.Now()
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the three-node swarm left something behind:\n%v", err)
		} else {
			t.Logf("three-node swarm torn down in %s; nothing left behind", time.Since(start).Round(time.Millisecond))
		}
	})
	t.Logf("three-node swarm up in %s", time.Since(start).Round(time.Millisecond))
	e := newEnv(t, c)
	out := e.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}")
	t.Logf("nodes:\n%s", strings.TrimSpace(out))

	e.createVolume("s8-vol", "--type", "mount", "--scope", "single", "--sharing", "none")
	v, _ := e.waitCreated("s8-vol", 60*time.Second)
	vid := v.VolumeID()
	// Workers only: draining one leaves exactly one other place to go.
	e.service("s8-app", writeScript, "--mount", "type=cluster,src=s8-vol,dst=/data", "--constraint", "node.role==worker")
	tk := e.waitRunning("s8-app", 120*time.Second)
	a := e.nodeOf(tk)
	sum := strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]
	t.Logf("task %s runs on %s and wrote sha256 %s", tk.ID[:12], a.Name, sum)

	w, err := c.NewWatcher(c.VolumeImage(vid))
	if err != nil {
		t.Fatal(err)
	}
	mw, stop := watchMounts(e.ctx, w, 20*time.Millisecond)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	time.Sleep(200 * time.Millisecond)

	moveStart := time.Now()
	e.docker("node", "update", "--availability", "drain", a.Name)
	t.Cleanup(func() { c.Manager().Docker(context.Background(), "node", "update", "--availability", "active", a.Name) })
	tk = e.waitNewTask("s8-app", tk.ID, 120*time.Second)
	b := e.nodeOf(tk)
	moved := time.Since(moveStart)
	if b == a {
		t.Fatalf("after draining %s the task still runs there", a.Name)
	}
	e.checkOnVolume(tk, vid, "/data")
	got := strings.Fields(e.exec(tk, "sha256sum /data/blob"))[0]
	// Let the watcher see the settled state.
	time.Sleep(500 * time.Millisecond)
	stop()
	stopped = true

	t.Logf("drain of %s: the task runs on %s %s later and reads sha256 %s", a.Name, b.Name, moved.Round(time.Millisecond), got)
	t.Logf("mount watch: %d samples every 20 ms; timeline:\n%s", mw.samples, strings.Join(mw.timeline, "\n"))
	if got != sum {
		t.Errorf("%s reads sha256 %s, %s wrote %s", b.Name, got, a.Name, sum)
	}
	for _, err := range mw.errs {
		t.Errorf("mount watch: %v", err)
	}
	if mw.samples < 10 || !mw.seenOn[a.Name] || !mw.seenOn[b.Name] {
		t.Errorf("the mount watch saw too little to judge: %d samples, seen on %v (want %s and %s)", mw.samples, mw.seenOn, a.Name, b.Name)
	}
	if len(mw.overlaps) > 0 {
		o := mw.overlaps[0]
		t.Errorf("the single-writer volume %s was mounted for two nodes at once in %d samples; first at %s:\n%s",
			vid, len(mw.overlaps), o.at.Round(time.Millisecond), o.usage)
	}
	log := e.pluginLogSince(c.Manager())
	t.Logf("manager's plugin: ControllerPublishVolume refused with FailedPrecondition %d times during the move",
		strings.Count(log, "ControllerPublishVolume code=FailedPrecondition"))
	for _, n := range c.Nodes {
		l := e.pluginLogSince(n)
		t.Logf("%s plugin: NodeStageVolume %d, NodePublishVolume %d, NodeUnpublishVolume %d, NodeUnstageVolume %d",
			n.Name, countRPC(l, "NodeStageVolume"), countRPC(l, "NodePublishVolume"), countRPC(l, "NodeUnpublishVolume"), countRPC(l, "NodeUnstageVolume"))
	}
	e.docker("node", "update", "--availability", "active", a.Name)
	t.Run("stats from another node", func(t *testing.T) { testRemoteStats(t, c, vid, b) })
	t.Run("volume group", func(t *testing.T) { testGroupSpreadAndDrain(t, c) })
}

// testGroupSpreadAndDrain: two replicas, at most one per node, on a group
// of two volumes spread over two nodes; draining one node brings its
// replica up on the third with the volume it wrote.
func testGroupSpreadAndDrain(t *testing.T, c *harness.Cluster) {
	e := newEnv(t, c)
	for _, n := range []string{"s8g-1", "s8g-2"} {
		e.createVolume(n, "--type", "mount", "--group", "s8g", "--required-bytes", "64M")
	}
	e.waitCreated("s8g-1", 60*time.Second)
	e.waitCreated("s8g-2", 60*time.Second)
	e.service("s8g-app", groupScript, "--replicas", "2", "--replicas-max-per-node", "1", "--env", "SLOT={{.Task.Slot}}",
		"--mount", "type=cluster,src=group:s8g,dst=/data")
	before := map[int]volumeState{}
	var drained *harness.Node
	var moving harness.Task
	for _, tk := range e.waitRunningN("s8g-app", 2, 120*time.Second) {
		st := e.volumeOf(tk)
		before[tk.Slot] = st
		n := e.nodeOf(tk)
		t.Logf("replica %d runs on %s, its volume written by replica %s", tk.Slot, n.Name, st.owner)
		if drained == n {
			t.Fatalf("both replicas run on %s", n.Name)
		}
		if drained == nil {
			drained, moving = n, tk
		}
	}
	start := time.Now()
	e.docker("node", "update", "--availability", "drain", drained.Name)
	t.Cleanup(func() {
		c.Manager().Docker(context.Background(), "node", "update", "--availability", "active", drained.Name)
	})
	moved := e.waitReplicaMoved("s8g-app", moving, drained, 120*time.Second)
	n := e.nodeOf(moved)
	st := e.volumeOf(moved)
	t.Logf("drained %s: replica %d runs on %s %s later, on the volume written by replica %s (mounted by %s)",
		drained.Name, moved.Slot, n.Name, time.Since(start).Round(time.Millisecond), st.owner, st.mounts)
	if n == drained {
		t.Errorf("replica %d still runs on the drained %s", moved.Slot, n.Name)
	}
	if st.owner != before[moving.Slot].owner || st.sum != before[moving.Slot].sum {
		t.Errorf("replica %d came back on a volume written by %q with sha256 %q; it had %q, %q",
			moved.Slot, st.owner, st.sum, before[moving.Slot].owner, before[moving.Slot].sum)
	}
	e.removeService("s8g-app")
}

// waitReplicaMoved waits for the replica of task old's slot to run again,
// in a new task, after drained was drained.
func (e *env) waitReplicaMoved(service string, old harness.Task, drained *harness.Node, timeout time.Duration) harness.Task {
	e.t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		ts, _ := e.n.Tasks(e.ctx, service)
		for _, tk := range ts {
			if tk.Slot == old.Slot && tk.ID != old.ID && tk.Status.State == "running" && tk.Status.ContainerStatus != nil {
				return tk
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("replica %d did not run again after draining %s:\n%s", old.Slot, drained.Name, e.servicePS(service))
		}
	}
}

// testRemoteStats: volume stats on the manager reports the volume as the
// worker that has it published sees it, through that worker's metrics;
// then, with the published mount taken away behind the plugin's back, as
// abnormal.
func testRemoteStats(t *testing.T, c *harness.Cluster, vid string, on *harness.Node) {
	e := newEnv(t, c)
	o := newOperatorCLI(t, e)
	onID, err := on.SwarmNodeID(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := o.stats("s8-vol")
	t.Logf("volume stats s8-vol on the manager:\n%s", o.want(0, on.Name, "volume", "stats", "s8-vol"))
	if s.VolumeID != vid || len(s.Nodes) != 1 {
		t.Fatalf("volume stats s8-vol: %+v, want volume %s on one node", s, vid)
	}
	n := s.Nodes[0]
	if n.Node != onID || !strings.Contains(n.From, on.Addr+":9464") || n.Abnormal || n.Error != "" {
		t.Fatalf("volume stats s8-vol: %+v, want node %s (%s) through http://%s:9464", n, onID, on.Name, on.Addr)
	}
	// The task wrote a blob of 16 MiB and its checksum.
	if len(n.Usage) != 2 || n.Usage[0].Unit != "bytes" || n.Usage[0].Total < 900<<20 || n.Usage[0].Used < 16<<20 ||
		n.Usage[0].Available <= 0 || n.Usage[1].Unit != "inodes" || n.Usage[1].Used <= 0 {
		t.Errorf("volume stats s8-vol on %s: %+v", on.Name, n.Usage)
	}

	s = o.statsWithoutPublishedMount(on, "s8-vol")
	t.Logf("%s's published mount taken away: %+v", on.Name, s.Nodes)
	if n := s.Nodes[0]; len(s.Nodes) != 1 || !n.Abnormal || n.Condition != "NotMounted" || len(n.Usage) != 0 {
		t.Errorf("volume stats s8-vol without its published mount on %s: %+v, want abnormal NotMounted", on.Name, s.Nodes)
	}
	if s = o.stats("s8-vol"); s.Nodes[0].Abnormal {
		t.Errorf("volume stats s8-vol with the mount back: %+v", s.Nodes)
	}
}
