package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// `swarm-csi stack volumes` creates the cluster volumes a stack file
// declares (docker stack deploy does not): a group of three for a service
// of three replicas, and one volume with name:. Run twice, the second run
// changes nothing; a changed spec is refused and changes nothing; then
// docker stack deploy runs every replica on a volume of its own.
func TestStackVolumes(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	bin := filepath.Join(t.TempDir(), "swarm-csi")
	if err := harness.BuildCommand(e.ctx, "./cmd/swarm-csi", bin); err != nil {
		t.Fatal(err)
	}
	stack := func(groupSize string) string {
		return fmt.Sprintf(`services:
  db:
    image: %[1]s
    # $$ is a literal $ for compose
    command: ["sh", "-c", "trap 'exit 0' TERM; %[2]s; sleep 1000000 & wait"]
    environment: {SLOT: "{{.Task.Slot}}"}
    stop_grace_period: 5s
    deploy: {replicas: 3}
    volumes: [{type: cluster, source: "group:st", target: /data}]
  cfg:
    image: %[1]s
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]
    stop_grace_period: 5s
    volumes: [{type: cluster, source: config, target: /cfg}]
volumes:
  st-1: &db
    driver: %[3]s
    driver_opts: {fsType: ext4}
    x-cluster-spec:
      group: st
      access_mode: {scope: single, sharing: none, mount_volume: {}}
      capacity_range: {required_bytes: %[4]s}
  st-2: *db
  st-3: *db
  config:
    name: st-config
    driver: %[3]s
    x-cluster-spec:
      access_mode: {scope: single, sharing: none, mount_volume: {fs_type: xfs}}
      capacity_range: {required_bytes: 320M}
`, harness.BusyboxImage, strings.ReplaceAll(groupScript, "$", "$$"), harness.PluginName, groupSize)
	}
	file := filepath.Join(t.TempDir(), "stack.yml")
	run := func(content string) (string, error) {
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(e.ctx, bin, "stack", "volumes", "-c", file, "--namespace", "st")
		cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+e.n.Socket)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	names := []string{"st-config", "st_st-1", "st_st-2", "st_st-3"}
	for _, n := range names {
		e.track(&e.volumes, n)
	}
	out, err := run(stack("64M"))
	if err != nil {
		t.Fatalf("swarm-csi stack volumes: %v\n%s", err, out)
	}
	t.Logf("first run:\n%s", out)
	for _, n := range names {
		if !strings.Contains(out, "created  "+n+"\n") {
			t.Errorf("first run did not create %s", n)
		}
	}
	for _, n := range names {
		v, _ := e.waitCreated(n, 60*time.Second)
		if n != "st-config" && v.ClusterVolume.Spec.Group != "st" {
			t.Errorf("%s: group %q, want st", n, v.ClusterVolume.Spec.Group)
		}
	}
	out, err = run(stack("64M"))
	if err != nil || strings.Count(out, "exists   ") != 4 || strings.Contains(out, "created") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	t.Logf("second run:\n%s", out)
	out, err = run(stack("128M"))
	if err == nil || !strings.Contains(out, "st_st-1 (st-1) exists with capacity range 67108864-0, not 134217728-0") {
		t.Fatalf("a changed size: %v\n%s", err, out)
	}
	t.Logf("with another size:\n%s", out)
	if err := os.WriteFile(file, []byte(stack("64M")), 0o644); err != nil {
		t.Fatal(err)
	}

	e.track(&e.stacks, "st")
	e.docker("stack", "deploy", "--detach=true", "--resolve-image", "never", "-c", file, "st")
	devices := map[string]bool{}
	for _, tk := range e.waitRunningN("st_db", 3, 180*time.Second) {
		st := e.volumeOf(tk)
		if st.owner != fmt.Sprint(tk.Slot) || devices[st.device] {
			t.Errorf("replica %d: volume on %s written by %q (devices so far %v)", tk.Slot, st.device, st.owner, devices)
		}
		devices[st.device] = true
	}
	tk := e.waitRunning("st_cfg", 90*time.Second)
	if got := e.exec(tk, "grep ' /cfg ' /proc/mounts | cut -d' ' -f3"); got != "xfs" {
		t.Errorf("st_cfg mounts %q at /cfg, want the xfs volume st-config", got)
	}
	t.Logf("the stack runs, each replica on a volume of its own:\n%s", e.servicePS("st_db"))
}
