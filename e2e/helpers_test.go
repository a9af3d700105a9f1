package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// env drives one test against a cluster through the docker CLI and
// removes what the test created. On failure it prints what is needed to
// understand it: docker volume inspect, docker service ps --no-trunc and
// the plugin's log (its output is in dockerd's log).
type env struct {
	t   *testing.T
	c   *harness.Cluster
	n   *harness.Node // the manager: every command goes to it
	ctx context.Context

	mu       sync.Mutex
	services []string
	volumes  []string
	stacks   []string
	logStart map[string]int64
}

func newEnv(t *testing.T, c *harness.Cluster) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	e := &env{t: t, c: c, n: c.Manager(), ctx: ctx, logStart: map[string]int64{}}
	for _, n := range c.Nodes {
		e.logStart[n.Name] = n.LogSize()
	}
	t.Cleanup(func() {
		defer cancel()
		if t.Failed() {
			e.dump()
		}
		e.removeAll()
	})
	return e
}

// docker runs a docker command on the manager and fails the test if it
// fails.
func (e *env) docker(args ...string) string {
	e.t.Helper()
	out, err := e.n.Docker(e.ctx, args...)
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	return out
}

// createVolume runs docker volume create --driver swarm-csi:latest.
func (e *env) createVolume(name string, args ...string) {
	e.t.Helper()
	e.track(&e.volumes, name)
	full := append([]string{"volume", "create", "--driver", harness.PluginName}, args...)
	e.docker(append(full, name)...)
}

func (e *env) track(list *[]string, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	*list = append(*list, name)
}

// inspectVolume is docker volume inspect; it fails the test on error.
func (e *env) inspectVolume(name string) (*harness.Volume, string) {
	e.t.Helper()
	v, raw, err := e.n.InspectVolume(e.ctx, name)
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	return v, raw
}

// waitVolume polls docker volume inspect until ok holds.
func (e *env) waitVolume(name string, timeout time.Duration, what string, ok func(*harness.Volume) bool) (*harness.Volume, time.Duration) {
	e.t.Helper()
	start := time.Now()
	for {
		v, raw := e.inspectVolume(name)
		if ok(v) {
			return v, time.Since(start)
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("volume %s: not %s after %s (status %q):\n%s", name, what, timeout, v.Status(), raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitCreated waits for the volume to leave "pending creation".
func (e *env) waitCreated(name string, timeout time.Duration) (*harness.Volume, time.Duration) {
	e.t.Helper()
	return e.waitVolume(name, timeout, "created", func(v *harness.Volume) bool { return v.VolumeID() != "" })
}

// waitUnpublished waits until no node holds the volume.
func (e *env) waitUnpublished(name string, timeout time.Duration) time.Duration {
	e.t.Helper()
	_, d := e.waitVolume(name, timeout, "unpublished from every node", func(v *harness.Volume) bool {
		return v.ClusterVolume != nil && len(v.ClusterVolume.PublishStatus) == 0
	})
	return d
}

// service starts a service of the busybox image running script, which
// runs as PID 1: the trap makes it stop at once on SIGTERM.
func (e *env) service(name, script string, args ...string) {
	e.t.Helper()
	e.track(&e.services, name)
	full := []string{"service", "create", "--detach", "--name", name, "--no-resolve-image",
		"--stop-grace-period", "5s", "--restart-condition", "on-failure"}
	full = append(full, args...)
	full = append(full, harness.BusyboxImage, "sh", "-c", `trap "exit 0" TERM; `+script+`; sleep 1000000 & wait`)
	e.docker(full...)
}

// waitRunning waits for one task of the service to run and returns it.
func (e *env) waitRunning(service string, timeout time.Duration) harness.Task {
	e.t.Helper()
	start := time.Now()
	var last []harness.Task
	for {
		ts, err := e.n.Tasks(e.ctx, service)
		if err == nil {
			last = ts
			for _, tk := range ts {
				if tk.Status.State == "running" && tk.DesiredState == "running" && tk.Status.ContainerStatus != nil {
					return tk
				}
			}
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("service %s: no running task after %s: %v\ntasks: %+v\n%s", service, timeout, err, last, e.servicePS(service))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nodeOf returns the cluster node a task runs on.
func (e *env) nodeOf(tk harness.Task) *harness.Node {
	e.t.Helper()
	ids, err := e.c.NodeIDs(e.ctx)
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	n, ok := ids[tk.NodeID]
	if !ok {
		e.t.Fatalf("task %s runs on unknown node %s", tk.ID, tk.NodeID)
	}
	return n
}

// exec runs a shell script in the task's container, on its node.
func (e *env) exec(tk harness.Task, script string) string {
	e.t.Helper()
	n := e.nodeOf(tk)
	out, err := n.Docker(e.ctx, "exec", tk.Status.ContainerStatus.ContainerID, "sh", "-c", script)
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	return strings.TrimSpace(out)
}

// removeService removes a service and waits until its containers are gone.
func (e *env) removeService(name string) {
	e.t.Helper()
	e.docker("service", "rm", name)
	e.mu.Lock()
	for i, s := range e.services {
		if s == name {
			e.services = append(e.services[:i], e.services[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	e.waitNoContainers(name, 60*time.Second)
}

// waitNoContainers waits until no node runs a container of the service.
func (e *env) waitNoContainers(service string, timeout time.Duration) {
	e.t.Helper()
	start := time.Now()
	for {
		var left []string
		for _, n := range e.c.Nodes {
			out, err := n.Docker(e.ctx, "ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+service)
			if err != nil || strings.TrimSpace(out) != "" {
				left = append(left, fmt.Sprintf("%s: %v %s", n.Name, err, strings.TrimSpace(out)))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("service %s: containers still there after %s: %v", service, timeout, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeVolume drains and removes a volume, retrying while Swarm still
// sees it in use (5-10 s after the service is gone: docs/swarm.md,
// "Removing volumes").
func (e *env) removeVolume(name string, timeout time.Duration) error {
	start := time.Now()
	for {
		_, err := e.n.Docker(e.ctx, "volume", "update", "--availability", "drain", name)
		if err == nil {
			break
		}
		if strings.Contains(err.Error(), "no such volume") || strings.Contains(strings.ToLower(err.Error()), "not found") {
			return nil
		}
		// Swarm changed the volume meanwhile (its publish status): again.
		if !strings.Contains(err.Error(), "update out of sequence") || time.Since(start) > timeout {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
	for {
		_, err := e.n.Docker(e.ctx, "volume", "rm", name)
		if err == nil {
			return nil
		}
		if time.Since(start) > timeout {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitVolumeGone waits until docker volume inspect no longer finds it
// (Swarm removes it after DeleteVolume succeeded).
func (e *env) waitVolumeGone(name string, timeout time.Duration) time.Duration {
	e.t.Helper()
	start := time.Now()
	for {
		_, raw, err := e.n.InspectVolume(e.ctx, name)
		if low := strings.ToLower(raw); err != nil && (strings.Contains(low, "no such volume") || strings.Contains(low, "not found")) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("volume %s still there %s after docker volume rm: %v\n%s", name, timeout, err, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeAll removes what the test left: stacks, services, then volumes.
func (e *env) removeAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.ctx = ctx
	for _, s := range e.stacks {
		e.n.Docker(ctx, "stack", "rm", s)
	}
	for _, s := range e.services {
		e.n.Docker(ctx, "service", "rm", s)
	}
	// A volume can go only once no container uses it.
	filters := []string{}
	for _, s := range e.stacks {
		filters = append(filters, "label=com.docker.stack.namespace="+s)
	}
	for _, s := range e.services {
		filters = append(filters, "label=com.docker.swarm.service.name="+s)
	}
	for _, f := range filters {
		for start := time.Now(); time.Since(start) < time.Minute; time.Sleep(200 * time.Millisecond) {
			busy := false
			for _, n := range e.c.Nodes {
				if out, err := n.Docker(ctx, "ps", "-aq", "--filter", f); err == nil && strings.TrimSpace(out) != "" {
					busy = true
				}
			}
			if !busy {
				break
			}
		}
	}
	for _, v := range e.volumes {
		if err := e.removeVolume(v, 60*time.Second); err != nil {
			e.t.Logf("cleanup: volume %s: %v; removing it with --force", v, err)
			e.n.Docker(ctx, "volume", "rm", "--force", v)
		}
	}
}

func (e *env) servicePS(service string) string {
	out, _ := e.n.Docker(e.ctx, "service", "ps", "--no-trunc", service)
	return out
}

// dump prints the state a failure needs: volumes, services, the plugin's
// log and dockerd's log since the test started.
func (e *env) dump() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b strings.Builder
	for _, v := range e.volumes {
		out, _ := e.n.Docker(ctx, "volume", "inspect", v)
		fmt.Fprintf(&b, "\n--- docker volume inspect %s\n%s", v, out)
	}
	for _, s := range e.services {
		out, _ := e.n.Docker(ctx, "service", "ps", "--no-trunc", s)
		fmt.Fprintf(&b, "\n--- docker service ps --no-trunc %s\n%s", s, out)
		out, _ = e.n.Docker(ctx, "service", "inspect", "--pretty", s)
		fmt.Fprintf(&b, "\n--- docker service inspect --pretty %s\n%s", s, out)
	}
	out, _ := e.n.Docker(ctx, "volume", "ls", "--cluster")
	fmt.Fprintf(&b, "\n--- docker volume ls --cluster\n%s", out)
	out, _ = e.n.Docker(ctx, "node", "ls")
	fmt.Fprintf(&b, "\n--- docker node ls\n%s", out)
	for _, n := range e.c.Nodes {
		out, _ := n.Docker(ctx, "plugin", "ls")
		fmt.Fprintf(&b, "\n--- [%s] docker plugin ls\n%s", n.Name, out)
		log, _ := n.LogSince(e.logStart[n.Name])
		var plugin, daemon []string
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "plugin=") {
				plugin = append(plugin, l)
			} else if strings.Contains(l, "level=error") || strings.Contains(l, "level=warn") ||
				strings.Contains(strings.ToLower(l), "volume") || strings.Contains(l, "csi") {
				daemon = append(daemon, l)
			}
		}
		fmt.Fprintf(&b, "\n--- [%s] plugin log (from %s) during this test\n%s\n", n.Name, n.LogPath, lastLines(plugin, 200))
		fmt.Fprintf(&b, "\n--- [%s] dockerd warnings, errors and volume lines during this test\n%s\n", n.Name, lastLines(daemon, 150))
		fmt.Fprintf(&b, "(by hand: %s docker ...)\n", n.DockerEnv())
	}
	b.WriteString(blockedProcs())
	e.t.Logf("state at failure:%s", b.String())
}

// blockedProcs lists the threads waiting on the kernel (state D) or on a
// FUSE daemon's answer, with their kernel stacks, and the FUSE daemons of
// the storage: a mount that no longer answers shows up there.
func blockedProcs() string {
	var b strings.Builder
	b.WriteString("\n--- threads in state D or waiting on FUSE, and FUSE daemons\n")
	for _, p := range harness.ListProcs() {
		cmd := p.Cmdline
		if len(cmd) > 160 {
			cmd = cmd[:160] + "..."
		}
		if p.Comm == "ceph-fuse" || p.Comm == "rbd-fuse" {
			fmt.Fprintf(&b, "%d %s %s: %s\n", p.Pid, p.State, p.Comm, cmd)
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", p.Pid))
		for _, task := range tasks {
			stat, _ := os.ReadFile(filepath.Join(task, "stat"))
			wchan, _ := os.ReadFile(filepath.Join(task, "wchan"))
			s := string(stat)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) == 0 || (f[0] != "D" && string(wchan) != "request_wait_answer") {
				continue
			}
			stack, _ := os.ReadFile(filepath.Join(task, "stack"))
			fmt.Fprintf(&b, "%d (%s) thread %s %s in %s:\n%s", p.Pid, p.Comm, filepath.Base(task), f[0], wchan, stack)
		}
	}
	return b.String()
}

func lastLines(ls []string, n int) string {
	if len(ls) > n {
		ls = append([]string{fmt.Sprintf("... %d earlier lines", len(ls)-n)}, ls[len(ls)-n:]...)
	}
	return strings.Join(ls, "\n")
}

// pluginLogSince returns the plugin's lines of the node's dockerd log
// written since the test started.
func (e *env) pluginLogSince(n *harness.Node) string {
	log, _ := n.LogSince(e.logStart[n.Name])
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "plugin=") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// usage is what holds the volume now (loop devices and mounts).
func (e *env) usage(volumeID string) harness.Usage {
	e.t.Helper()
	var u harness.Usage
	var err error
	switch e.c.Backend {
	case "rbd":
		u, err = e.c.NewLoopWatcher(rbdLoop(volumeID)).Usage()
	case "hcloud":
		u, err = e.c.VolumeUsage(e.ctx, hcloudImage(e.c, volumeID))
	default:
		u, err = e.c.VolumeUsage(e.ctx, e.c.VolumeImage(volumeID))
	}
	if err != nil {
		e.t.Fatalf("volume %s: %v", volumeID, err)
	}
	return u
}

// loopsTagged returns the loop devices the driver tagged with the volume's
// id, whether or not its image still exists.
func loopsTagged(t *testing.T, volumeID string) []harness.Loop {
	t.Helper()
	loops, err := harness.ListLoops()
	if err != nil {
		t.Fatal(err)
	}
	var out []harness.Loop
	for _, l := range loops {
		if strings.HasPrefix(l.FileName, volumeID+"@") || strings.Contains(l.BackingFile, volumeID) {
			out = append(out, l)
		}
	}
	return out
}

// checkOnVolume fails the test unless the task's container has the
// volume's filesystem at target: a loop device backed by the volume's
// image. (A container can also get a plain directory there, if Docker
// binds an unmounted publish path.)
func (e *env) checkOnVolume(tk harness.Task, volumeID, target string) {
	e.t.Helper()
	n := e.nodeOf(tk)
	out, err := n.Docker(e.ctx, "inspect", "--format", "{{.State.Pid}}", tk.Status.ContainerStatus.ContainerID)
	if err != nil {
		e.t.Fatalf("%v", err)
	}
	pid := strings.TrimSpace(out)
	ms, err := harness.ReadMountinfo("/proc/" + pid + "/mountinfo")
	if err != nil {
		e.t.Fatalf("mounts of the container of task %s: %v", tk.ID, err)
	}
	loops := e.usage(volumeID).Loops
	var found *harness.Mount
	for i, m := range ms {
		if m.MountPoint == target {
			found = &ms[i]
		}
	}
	if found == nil {
		e.t.Fatalf("task %s on %s: nothing is mounted at %s in the container; it writes to its own layer, not to volume %s", tk.ID, n.Name, target, volumeID)
	}
	for _, l := range loops {
		if l.MajorMinor == found.MajorMinor {
			return
		}
	}
	var devs []string
	for _, l := range loops {
		devs = append(devs, l.Dev+" ("+l.MajorMinor+")")
	}
	e.t.Fatalf("task %s on %s: %s in the container is not volume %s: it is %s %s (device %s, root %s), while the volume's loop devices are %v",
		tk.ID, n.Name, target, volumeID, found.FSType, found.Source, found.MajorMinor, found.Root, devs)
}

// inPlugin runs busybox ARGS in the mount namespace of n's plugin. Its
// rootfs has no tools, so a static busybox is put in its propagated mount
// (/data/published), which the host sees too, for the time of the call.
func (e *env) inPlugin(n *harness.Node, args ...string) {
	e.t.Helper()
	pid, err := n.PluginPID(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	root, err := n.PluginMountsRoot(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	tools := filepath.Join(root, "e2e-tools")
	defer os.RemoveAll(tools)
	if err := os.MkdirAll(tools, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if out, err := exec.Command("cp", "/usr/bin/busybox", tools).CombinedOutput(); err != nil {
		e.t.Fatalf("%v: %s", err, out)
	}
	cmd := append([]string{"-t", fmt.Sprint(pid), "-m", "/data/published/e2e-tools/busybox"}, args...)
	if out, err := exec.CommandContext(e.ctx, "nsenter", cmd...).CombinedOutput(); err != nil {
		e.t.Fatalf("%s in %s's plugin: %v\n%s", strings.Join(args, " "), n.Name, err, out)
	}
}
