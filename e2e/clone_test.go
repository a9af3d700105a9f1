package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// Seeding a volume from another: `--opt cloneFrom=<Swarm name>` makes the
// new volume a copy (Swarm sends no content source). The copy holds what
// was written with fsync to the source, the two then diverge, and a
// missing source is a clear error in the plugin log that creates nothing.
func TestCloneFrom(t *testing.T) {
	c := singleNode(t)
	testCloneFrom(t, c, func() int {
		images, _ := filepath.Glob(filepath.Join(c.DataDir, "volumes", "*.img"))
		return len(images)
	})
}

// testCloneFrom runs the scenario on a cluster whose backend holds
// volumes() volumes.
func testCloneFrom(t *testing.T, c *harness.Cluster, volumes func() int) {
	e := newEnv(t, c)
	backend := c.Backend
	if backend == "" {
		backend = "loop"
	}
	e.createVolume("cl-db-1", "--type", "mount", "--required-bytes", "1G")
	e.waitCreated("cl-db-1", 60*time.Second)

	e.service("cl-writer", writeScript, "--mount", "type=cluster,src=cl-db-1,dst=/data")
	tk := e.waitRunning("cl-writer", 90*time.Second)
	sum := strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]
	e.removeService("cl-writer")
	e.waitUnpublished("cl-db-1", 60*time.Second)

	start := time.Now()
	e.createVolume("cl-db-2", "--type", "mount", "--opt", "cloneFrom=cl-db-1")
	v2, _ := e.waitCreated("cl-db-2", 60*time.Second)
	t.Logf("a copy of a 1 GiB volume holding 16 MiB was created %s after docker volume create (Swarm's RPC budget: ~15 s)",
		time.Since(start).Round(time.Millisecond))
	if got := v2.ClusterVolume.Info.CapacityBytes; got != gib {
		t.Errorf("the copy has %d bytes, want its source's %d", got, gib)
	}

	// The copy holds the data; what is written to it stays in it.
	e.service("cl-reader-2", "echo only-in-copy > /data/marker && sync", "--mount", "type=cluster,src=cl-db-2,dst=/data")
	tk = e.waitRunning("cl-reader-2", 90*time.Second)
	if got := strings.Fields(e.exec(tk, "sha256sum /data/blob"))[0]; got != sum {
		t.Fatalf("the copy reads sha256 %s, the source's writer wrote %s", got, sum)
	}
	e.waitFile(tk, "/data/marker", 30*time.Second)
	e.removeService("cl-reader-2")
	e.waitUnpublished("cl-db-2", 60*time.Second)

	e.service("cl-reader-1", "true", "--mount", "type=cluster,src=cl-db-1,dst=/data")
	tk = e.waitRunning("cl-reader-1", 90*time.Second)
	if out := e.exec(tk, "test -e /data/marker && echo present || echo absent"); out != "absent" {
		t.Errorf("a file written to the copy appears in the source: %q", out)
	}
	if got := strings.Fields(e.exec(tk, "sha256sum /data/blob"))[0]; got != sum {
		t.Errorf("the source now reads sha256 %s, want %s", got, sum)
	}
	e.removeService("cl-reader-1")
	t.Logf("copy and source read the same 16 MiB (sha256 %s) and diverge afterwards", sum)

	// A missing source: the driver's message in the plugin log, no volume
	// pending creation becomes one, and no image is made.
	before := volumes()
	e.createVolume("cl-bad", "--type", "mount", "--opt", "cloneFrom=cl-nope")
	want := regexp.MustCompile(`code=NotFound .*cloneFrom=cl-nope: no volume of the ` + backend + ` backend has that name or id`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if line := matchLine(e.pluginLogSince(e.n), "CreateVolume", want); line != "" {
			t.Logf("cloneFrom=cl-nope: the plugin log says: %s", shorten(line, 300))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no plugin log line matching %q", want)
		}
	}
	if v, raw := e.inspectVolume("cl-bad"); v.VolumeID() != "" {
		t.Errorf("a copy of a missing volume was created:\n%s", raw)
	}
	if after := volumes(); after != before {
		t.Errorf("the backend held %d volumes before the bad copy, %d after", before, after)
	}
	e.docker("volume", "rm", "--force", "cl-bad")
	e.waitVolumeGone("cl-bad", 30*time.Second)
}

// matchLine returns the first line of log naming method that want matches.
func matchLine(log, method string, want *regexp.Regexp) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, method) && want.MatchString(l) {
			return l
		}
	}
	return ""
}
