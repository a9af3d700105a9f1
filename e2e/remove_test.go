package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Scenario 6: docker volume rm of a volume in use is refused and loses
// nothing; after docker volume update --availability drain and the
// service's removal, docker volume rm deletes the image file, the
// metadata and the loop device.
func TestVolumeRemove(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	e.createVolume("s6-vol", "--type", "mount")
	v, _ := e.waitCreated("s6-vol", 60*time.Second)
	vid := v.VolumeID()
	image, record := c.VolumeImage(vid), c.VolumeRecord(vid)
	for _, p := range []string{image, record} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("volume %s: %v", vid, err)
		}
	}

	e.service("s6-user", writeScript, "--mount", "type=cluster,src=s6-vol,dst=/data")
	tk := e.waitRunning("s6-user", 90*time.Second)
	sum := strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]

	out, err := e.n.Docker(e.ctx, "volume", "rm", "s6-vol")
	if err == nil {
		t.Fatalf("docker volume rm of a volume in use succeeded: %s", out)
	}
	t.Logf("docker volume rm of the volume in use is refused: %s", strings.TrimSpace(out))
	if !strings.Contains(strings.ToLower(out), "in use") {
		t.Errorf("the refusal does not say the volume is in use: %s", out)
	}
	if got := strings.Fields(e.exec(tk, "sha256sum /data/blob"))[0]; got != sum {
		t.Fatalf("after the refused rm the data reads %s, want %s", got, sum)
	}
	if _, err := os.Stat(image); err != nil {
		t.Fatalf("after the refused rm: %v", err)
	}
	if v, _ := e.inspectVolume("s6-vol"); v.VolumeID() != vid {
		t.Fatalf("after the refused rm the volume's id is %q, want %s", v.VolumeID(), vid)
	}

	e.removeService("s6-user")
	e.docker("volume", "update", "--availability", "drain", "s6-vol")
	start := time.Now()
	var rmErr error
	for time.Since(start) < 60*time.Second {
		if _, rmErr = e.n.Docker(e.ctx, "volume", "rm", "s6-vol"); rmErr == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if rmErr != nil {
		t.Fatalf("docker volume rm after drain and service rm: %v", rmErr)
	}
	t.Logf("docker volume rm succeeded %s after drain (Swarm refuses it while it has not yet unpublished)", time.Since(start).Round(time.Millisecond))
	gone := e.waitVolumeGone("s6-vol", 60*time.Second)
	t.Logf("volume gone from docker volume inspect %s after rm", gone.Round(time.Millisecond))

	// DeleteVolume has run once Swarm forgot the volume.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []string
		for _, p := range []string{image, record} {
			if _, err := os.Stat(p); err == nil {
				left = append(left, p)
			}
		}
		names, _ := os.ReadDir(filepath.Join(c.DataDir, "names"))
		for _, n := range names {
			if l, err := os.Readlink(filepath.Join(c.DataDir, "names", n.Name())); err == nil && strings.Contains(l, vid) {
				left = append(left, "names/"+n.Name()+" -> "+l)
			}
		}
		for _, l := range loopsTagged(t, vid) {
			left = append(left, "loop device "+l.Dev+" ("+l.BackingFile+")")
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after docker volume rm, %s is still there: %v", vid, left)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("image, record, name link and loop device of %s are gone", vid)
}
