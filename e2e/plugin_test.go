package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// Scenario 1: docker plugin create + enable on a single-node swarm. The
// plugin is enabled, its socket is where Docker looks for it, and the
// manager treats it as a controller: a volume's VolumeID is the driver's
// ("vol-..."), not the volume's name (a controller-less plugin's volume
// silently gets its name as id: docs/swarm.md, "Identity and Probe").
func TestPluginEnabledAndController(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)

	out := e.docker("plugin", "inspect", "--format", "{{.Enabled}} {{.Config.Interface.Socket}} {{json .Config.Interface.Types}}", harness.PluginName)
	fields := strings.Fields(out)
	if len(fields) < 3 || fields[0] != "true" {
		t.Fatalf("plugin %s not enabled: %s", harness.PluginName, out)
	}
	for _, want := range []string{"docker.csicontroller/1.0", "docker.csinode/1.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugin interface types lack %s: %s", want, out)
		}
	}
	id, err := e.n.PluginID(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// dockerd keeps plugin sockets under /run/docker/plugins whatever its
	// --exec-root: socket paths must stay under 108 bytes.
	sock := filepath.Join(harness.PluginRunDir, id, fields[1])
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("the plugin's socket %s is not there: %v", sock, err)
	}
	pid, err := e.n.PluginPID(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plugin %s enabled, id %s, swarm-csi pid %d, socket %s", harness.PluginName, id[:12], pid, sock)

	e.createVolume("s1-ctl", "--type", "mount")
	v, took := e.waitCreated("s1-ctl", 60*time.Second)
	vid := v.VolumeID()
	if vid == "s1-ctl" || !strings.HasPrefix(vid, "vol-") {
		_, raw := e.inspectVolume("s1-ctl")
		t.Fatalf("VolumeID is %q: the manager does not treat the plugin as a controller (want the driver's vol-... id)\n%s", vid, raw)
	}
	if _, err := os.Stat(c.VolumeRecord(vid)); err != nil {
		t.Errorf("the driver's record of %s is not in the data directory: %v", vid, err)
	}
	t.Logf("volume s1-ctl created in %s with the driver's id %s", took.Round(time.Millisecond), vid)
}
