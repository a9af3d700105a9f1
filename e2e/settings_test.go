package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// A bad plugin setting stops the plugin at enable with a message naming the
// setting; it never half-starts. Putting the setting right enables it again.
func TestBadPluginSetting(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	e.docker("plugin", "disable", harness.PluginName)
	restored := false
	t.Cleanup(func() {
		if !restored {
			_, _ = e.n.Docker(e.ctx, "plugin", "set", harness.PluginName, "LOG_LEVEL=info")
			_, _ = e.n.Docker(e.ctx, "plugin", "enable", harness.PluginName)
		}
	})
	e.docker("plugin", "set", harness.PluginName, "LOG_LEVEL=loud")
	logFrom := e.n.LogSize()
	out, err := e.n.Docker(e.ctx, "plugin", "enable", harness.PluginName)
	if err == nil {
		t.Fatalf("docker plugin enable with LOG_LEVEL=loud succeeded: %s", out)
	}
	log, _ := e.n.LogSince(logFrom)
	if !strings.Contains(out+log, "LOG_LEVEL") {
		t.Fatalf("neither docker plugin enable nor the plugin log names LOG_LEVEL:\nenable: %s\nlog:\n%s", out, log)
	}
	t.Logf("enable refused: %s", strings.TrimSpace(out))
	if pid, err := e.n.PluginPID(e.ctx); err == nil && pid > 0 {
		t.Fatalf("a swarm-csi process (pid %d) runs although the setting is bad", pid)
	}

	e.docker("plugin", "set", harness.PluginName, "LOG_LEVEL=info")
	e.docker("plugin", "enable", harness.PluginName)
	restored = true
	e.createVolume("s-settings", "--type", "mount")
	e.waitCreated("s-settings", 60*time.Second)
}
