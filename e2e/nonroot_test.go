package e2e

import (
	"strings"
	"testing"
	"time"
)

// Swarm passes no volume mount group: without the uid, gid and mode
// options a new volume's root belongs to root and a service running as
// another user cannot write to it. With them, the service running as that
// user can, and a service running as someone else cannot.
func TestNonRootService(t *testing.T) {
	e := newEnv(t, singleNode(t))
	e.createVolume("nonroot-data", "--type", "mount", "--opt", "uid=1000", "--opt", "gid=1000", "--opt", "mode=0750")
	e.waitCreated("nonroot-data", 60*time.Second)
	mount := []string{"--mount", "type=cluster,src=nonroot-data,dst=/data"}

	// What each service's write gave, in its container's /tmp/result.
	const write = `{ echo "from $(id -u)" > /data/file-$(id -u) && echo written || echo failed; } > /tmp/result 2>&1`
	result := func(service string) (string, func(string) string) {
		tk := e.waitRunning(service, 90*time.Second)
		var out string
		for deadline := time.Now().Add(30 * time.Second); out == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			out = e.exec(tk, "cat /tmp/result 2>/dev/null || true")
		}
		return out, func(script string) string { return e.exec(tk, script) }
	}

	e.service("nonroot-1000", write, append([]string{"--user", "1000:1000"}, mount...)...)
	out, run := result("nonroot-1000")
	if !strings.HasSuffix(out, "written") {
		t.Fatalf("the service running as 1000:1000 could not write to the volume: %q", out)
	}
	if got := run("stat -c '%u:%g %a' /data"); got != "1000:1000 750" {
		t.Errorf("the volume's root is %q in the container, want 1000:1000 750", got)
	}
	if got := run("cat /data/file-1000"); got != "from 1000" {
		t.Errorf("read back %q", got)
	}
	t.Logf("as 1000:1000: %s; root of the volume %s", out, run("stat -c '%u:%g %a' /data"))
	e.removeService("nonroot-1000")
	e.waitUnpublished("nonroot-data", 60*time.Second)

	// Another user: the volume's root is not theirs, and mode 0750 lets
	// them neither write nor list.
	e.service("nonroot-2000", write, append([]string{"--user", "2000:2000"}, mount...)...)
	out, run = result("nonroot-2000")
	if !strings.Contains(out, "Permission denied") || !strings.HasSuffix(out, "failed") {
		t.Fatalf("the service running as 2000:2000 wrote to a volume of 1000:1000 with mode 0750: %q, want permission denied", out)
	}
	if got := run("ls /data 2>&1 || true"); !strings.Contains(got, "Permission denied") {
		t.Errorf("as 2000:2000, ls /data gave %q, want permission denied", got)
	}
	// The second stage left the owner and mode as they were.
	if got := run("stat -c '%u:%g %a' /data"); got != "1000:1000 750" {
		t.Errorf("after a second stage the volume's root is %q, want 1000:1000 750", got)
	}
	t.Logf("as 2000:2000: %s", out)
}
