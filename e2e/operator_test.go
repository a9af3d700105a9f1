package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// operatorCLI runs `swarm-csi ARGS` against the manager and its plugin.
type operatorCLI struct {
	t   *testing.T
	e   *env
	bin string
}

func newOperatorCLI(t *testing.T, e *env) *operatorCLI {
	bin := filepath.Join(t.TempDir(), "swarm-csi")
	if err := harness.BuildCommand(e.ctx, "./cmd/swarm-csi", bin); err != nil {
		t.Fatal(err)
	}
	return &operatorCLI{t: t, e: e, bin: bin}
}

// run returns the command's output and exit status. It runs in the
// manager's network namespace, where the other nodes' addresses are.
func (o *operatorCLI) run(args ...string) (string, int) {
	o.t.Helper()
	cmd := exec.CommandContext(o.e.ctx, "nsenter", append([]string{"--net=/run/netns/" + o.e.n.NetNS, o.bin}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+o.e.n.Socket)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		o.t.Fatalf("swarm-csi %s: %v", strings.Join(args, " "), err)
	}
	return string(out), code
}

// want runs a command that must exit with code and say want.
func (o *operatorCLI) want(code int, want string, args ...string) string {
	o.t.Helper()
	out, got := o.run(args...)
	if got != code || !strings.Contains(out, want) {
		o.t.Fatalf("swarm-csi %s: exit %d, want %d and %q:\n%s", strings.Join(args, " "), got, code, want, out)
	}
	return out
}

// writerScript appends a line with fsync every 50 ms and records any
// failed write in /data/errors.
const writerScript = `{ i=0; while true; do i=$((i+1)); echo "line $i" | dd of=/data/log oflag=append conv=notrunc,fsync 2>/dev/null || echo "write $i failed" >> /data/errors; sleep 0.05; done; } & true`

// metricsAddr is where the single-node swarm's plugin serves metrics, in
// the node's network namespace.
const metricsAddr = "127.0.0.1:9464"

// scrape reads the plugin's metrics from inside the node's namespace.
func (e *env) scrape() string {
	e.t.Helper()
	out, err := exec.CommandContext(e.ctx, "nsenter", "--net=/run/netns/"+e.n.NetNS,
		"busybox", "wget", "-q", "-O", "-", "http://"+metricsAddr+"/metrics").CombinedOutput()
	if err != nil {
		e.t.Fatalf("scrape the plugin's metrics: %v\n%s", err, out)
	}
	return string(out)
}

// metricValue is the value of the series line that starts with series.
func metricValue(scrape, series string) (float64, bool) {
	for _, l := range strings.Split(scrape, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// dfBytes is the size of /data in the task's container.
func (e *env) dfBytes(tk harness.Task) int64 {
	e.t.Helper()
	f := strings.Fields(e.exec(tk, "df -k /data | tail -1"))
	kb, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		e.t.Fatalf("df: %v", f)
	}
	return kb << 10
}

// The operator's commands on volumes Swarm cannot grow, snapshot or
// measure: online expansion under a writer (the figure), stats, inspect,
// ls with an orphan, snapshots, and bad input.
func TestOperatorCLI(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	o := newOperatorCLI(t, e)
	caps := harness.PluginCaps()
	before := e.scrape()

	for _, fs := range []string{"xfs", "ext4"} {
		name := "op-" + fs
		e.createVolume(name, "--type", "mount", "--opt", "fsType="+fs, "--required-bytes", "1G")
		e.waitCreated(name, 60*time.Second)
		e.service(name+"-svc", writerScript, "--mount", "type=cluster,src="+name+",dst=/data")
		tk := e.waitRunning(name+"-svc", 90*time.Second)
		size := e.dfBytes(tk)
		start := time.Now()
		out, code := o.run("volume", "expand", name, "2G")
		online := fs == "xfs" || strings.Contains(caps, "CAP_SYS_RESOURCE")
		if online {
			if code != 0 {
				t.Fatalf("%s: volume expand: exit %d:\n%s", name, code, out)
			}
			var after int64
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if after = e.dfBytes(tk); after > size+900<<20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: /data still %d bytes a minute after volume expand (was %d):\n%s", name, after, size, out)
				}
			}
			t.Logf("%s: online 1G -> 2G under a writer: the container sees %d bytes (was %d) %s after volume expand began",
				name, after, size, time.Since(start).Round(time.Millisecond))
		} else {
			// This machine's bounding set lacks CAP_SYS_RESOURCE: a mounted
			// ext4 grows at the next stage, and the command says so.
			if code != 1 || !strings.Contains(out, "CAP_SYS_RESOURCE") {
				t.Fatalf("%s: volume expand without CAP_SYS_RESOURCE: exit %d, want 1 naming it:\n%s", name, code, out)
			}
			t.Logf("%s: the plugin lacks CAP_SYS_RESOURCE (CAPS=%s): %s", name, caps, strings.TrimSpace(out))
			// A mount released and made again: scale to 0, wait for the
			// unpublish, scale back.
			e.docker("service", "scale", "--detach", name+"-svc=0")
			e.waitNoContainers(name+"-svc", 60*time.Second)
			e.waitUnpublished(name, 60*time.Second)
			e.docker("service", "scale", "--detach", name+"-svc=1")
			tk = e.waitNewTask(name+"-svc", tk.ID, 120*time.Second)
			if after := e.dfBytes(tk); after < size+900<<20 {
				t.Fatalf("%s: /data is %d bytes after the task restarted (was %d)", name, after, size)
			}
			t.Logf("%s: grown at the next stage (service scaled to 0 and back) to %d bytes", name, e.dfBytes(tk))
		}
		if errs := e.exec(tk, "cat /data/errors 2>/dev/null; true"); errs != "" {
			t.Errorf("%s: the writer failed during the expansion: %s", name, errs)
		}
		lines := e.exec(tk, "wc -l < /data/log")
		t.Logf("%s: the writer wrote %s lines with fsync, none failed", name, lines)
	}

	// The metrics moved: calls served, the node's tools, the volumes.
	after := e.scrape()
	for _, series := range []string{
		`swarm_csi_rpc_requests_total{code="OK",method="/csi.v1.Controller/ControllerExpandVolume"}`,
		`swarm_csi_rpc_requests_total{code="OK",method="/csi.v1.Node/NodePublishVolume"}`,
		`swarm_csi_backend_call_duration_seconds_count{backend="node",call="format and mount xfs",status="ok"}`,
		`swarm_csi_backend_call_duration_seconds_count{backend="loop",call="create image",status="ok"}`,
		`swarm_csi_backend_call_duration_seconds_count{backend="loop",call="attach loop device",status="ok"}`,
	} {
		was, _ := metricValue(before, series)
		now, ok := metricValue(after, series)
		if !ok || now <= was {
			t.Errorf("metrics: %s went from %v to %v (present: %v)", series, was, now, ok)
		}
	}
	vx, _ := e.inspectVolume("op-xfs")
	if used, ok := metricValue(after, `swarm_csi_volume_used_bytes{volume_id="`+vx.VolumeID()+`"}`); !ok || used <= 0 {
		t.Errorf("metrics: no used bytes for op-xfs (%s)", vx.VolumeID())
	}
	if n, ok := metricValue(after, `swarm_csi_volumes{state="published"}`); !ok || n < 2 {
		t.Errorf("metrics: %v published volumes, want at least 2", n)
	}
	t.Logf("metrics: %d series lines; e.g. %s", strings.Count(after, "\nswarm_csi_"), grepLine(after, "ControllerExpandVolume"))

	// stats and inspect, as JSON.
	stats := o.stats("op-xfs")
	if len(stats.Nodes) != 1 || stats.Nodes[0].From != "plugin socket" {
		t.Fatalf("volume stats op-xfs: %+v, want this node through the socket", stats)
	}
	if u := stats.Nodes[0].Usage; len(u) != 2 || u[0].Total < 1900<<20 || u[0].Used <= 0 || stats.Nodes[0].Abnormal {
		t.Errorf("volume stats op-xfs: %+v", stats)
	}
	// Its published mount taken away behind the plugin's back: abnormal,
	// with the reason, until it is back.
	gone := o.statsWithoutPublishedMount(e.n, "op-xfs")
	if n := gone.Nodes[0]; !n.Abnormal || !strings.HasPrefix(n.Condition, "NotMounted: ") || len(n.Usage) != 0 {
		t.Errorf("volume stats op-xfs without its published mount: %+v, want abnormal NotMounted", gone.Nodes)
	}
	t.Logf("op-xfs without its published mount: %s", gone.Nodes[0].Condition)
	if s := o.stats("op-xfs"); s.Nodes[0].Abnormal {
		t.Errorf("volume stats op-xfs with the mount back: %+v", s.Nodes)
	}
	var insp struct {
		VolumeID  string `json:"volume_id"`
		SizeBytes int64  `json:"size_bytes"`
		Nodes     []string
	}
	if err := json.Unmarshal([]byte(o.want(0, "volume_id", "--format", "json", "volume", "inspect", "op-xfs")), &insp); err != nil {
		t.Fatal(err)
	}
	v, _ := e.inspectVolume("op-xfs")
	if insp.VolumeID != v.VolumeID() || insp.SizeBytes != 2<<30 {
		t.Errorf("volume inspect op-xfs: %+v, want id %s and 2 GiB", insp, v.VolumeID())
	}
	t.Logf("volume stats op-xfs:\n%s", o.want(0, "bytes", "volume", "stats", "op-xfs"))

	// ls, with an orphan left by docker volume rm --force.
	e.createVolume("op-orphan", "--type", "mount")
	ov, _ := e.waitCreated("op-orphan", 60*time.Second)
	e.docker("volume", "rm", "--force", "op-orphan")
	e.waitVolumeGone("op-orphan", 30*time.Second)
	ls := o.want(0, "swarm-csi volume rm-orphan "+ov.VolumeID(), "volume", "ls")
	t.Logf("volume ls:\n%s", ls)
	for _, want := range []string{"op-xfs", "in use", ov.VolumeID()} {
		if !strings.Contains(ls, want) {
			t.Errorf("volume ls lacks %q", want)
		}
	}
	o.want(1, "is Swarm volume op-xfs, not an orphan", "volume", "rm-orphan", v.VolumeID())
	o.want(0, "deleted "+ov.VolumeID(), "volume", "rm-orphan", ov.VolumeID())
	if out := o.want(0, "op-xfs", "volume", "ls"); strings.Contains(out, ov.VolumeID()) {
		t.Errorf("the orphan is still listed after rm-orphan:\n%s", out)
	}

	// Snapshots, and a volume made from one.
	o.want(0, "snapshot before of op-xfs", "snapshot", "create", "op-xfs", "before")
	o.want(1, "exists already", "snapshot", "create", "op-xfs", "before")
	o.want(0, v.VolumeID(), "snapshot", "ls", "op-xfs")
	e.createVolume("op-restored", "--type", "mount", "--opt", "fromSnapshot=before")
	e.waitCreated("op-restored", 60*time.Second)
	e.service("op-restored-svc", "true", "--mount", "type=cluster,src=op-restored,dst=/data")
	tk := e.waitRunning("op-restored-svc", 90*time.Second)
	if n := e.exec(tk, "wc -l < /data/log"); n == "0" {
		t.Errorf("the volume made from snapshot before has an empty log")
	}
	o.want(0, "deleted before", "snapshot", "rm", "before")
	o.want(1, "no snapshot before", "snapshot", "rm", "before")

	// Bad input: clear errors, non-zero exit, nothing changed.
	e.docker("volume", "create", "op-local")
	defer e.docker("volume", "rm", "op-local")
	o.want(1, "no volume op-nope", "volume", "inspect", "op-nope")
	o.want(1, "smaller; volumes do not shrink", "volume", "expand", "op-xfs", "1G")
	o.want(1, "belongs to driver local", "volume", "expand", "op-local", "2G")
	o.want(2, "usage", "volume", "expand", "op-xfs")
	o.want(2, "size", "volume", "expand", "op-xfs", "huge")
	if insp2 := o.want(0, "2GiB", "volume", "inspect", "op-xfs"); !strings.Contains(insp2, fmt.Sprint(int64(2<<30))) {
		t.Errorf("op-xfs changed by the bad commands:\n%s", insp2)
	}
}

type volumeStats struct {
	VolumeID string `json:"volume_id"`
	Nodes    []struct {
		Node, From, Condition, Error string
		Abnormal                     bool
		Usage                        []struct {
			Unit                   string
			Total, Used, Available int64
		}
	}
}

// stats runs volume stats NAME, which must succeed.
func (o *operatorCLI) stats(name string) volumeStats {
	o.t.Helper()
	var s volumeStats
	if err := json.Unmarshal([]byte(o.want(0, "nodes", "--format", "json", "volume", "stats", name)), &s); err != nil {
		o.t.Fatal(err)
	}
	return s
}

// statsWithoutPublishedMount runs volume stats NAME with the volume's
// published mount on n unmounted inside n's plugin, behind its back, and
// then mounts it back as the plugin had.
func (o *operatorCLI) statsWithoutPublishedMount(n *harness.Node, name string) volumeStats {
	o.t.Helper()
	v, _ := o.e.inspectVolume(name)
	published, staged := "/data/published/"+v.ClusterVolume.ID, "/data/staged/"+v.ClusterVolume.ID
	o.e.inPlugin(n, "umount", published)
	s := o.stats(name)
	o.e.inPlugin(n, "mount", "--bind", staged, published)
	return s
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	return ""
}
