package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// writeScript writes 16 MiB of random data to /data/blob, fsyncs it and
// records its checksum beside it, unless an earlier task did.
const writeScript = `test -f /data/blob.sum || { dd if=/dev/urandom of=/data/blob bs=1M count=16 conv=fsync 2>/dev/null && ` +
	`sha256sum /data/blob > /data/blob.tmp && sync && mv /data/blob.tmp /data/blob.sum && sync; }`

// waitFile polls for a file in the task's container and returns its
// content.
func (e *env) waitFile(tk harness.Task, path string, timeout time.Duration) string {
	e.t.Helper()
	start := time.Now()
	for {
		out := e.exec(tk, "cat "+path+" 2>/dev/null || true")
		if out != "" {
			return out
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("%s did not appear in the container of task %s within %s", path, tk.ID, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitReleased waits until nothing holds the volume: no loop device
// backs its image and no mount of it is left anywhere.
func (e *env) waitReleased(volumeID string, timeout time.Duration) time.Duration {
	e.t.Helper()
	start := time.Now()
	for {
		u := e.usage(volumeID)
		if len(u.Loops) == 0 && len(u.Mounts) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			e.t.Fatalf("volume %s still held %s after its service was removed (Swarm sends no NodeUnstage; the driver must release on the last NodeUnpublish):\n%s",
				volumeID, timeout, u)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// countRPC counts the plugin's log lines for a CSI method.
func countRPC(log, method string) int {
	return strings.Count(log, "method=/csi.v1.Node/"+method+" ") + strings.Count(log, "method=/csi.v1.Controller/"+method+" ")
}

// Scenario 3: a service writes and fsyncs data on a cluster volume; after
// `docker service rm` the staging mount and the loop device are released
// although Swarm sends no NodeUnstage; a new service reads the data back
// byte for byte.
func TestDataSurvivesServiceRemoval(t *testing.T) { testDataSurvives(t, singleNode(t)) }

func testDataSurvives(t *testing.T, c *harness.Cluster) {
	e := newEnv(t, c)
	e.createVolume("s3-data", "--type", "mount")
	v, _ := e.waitCreated("s3-data", 60*time.Second)
	vid := v.VolumeID()

	start := time.Now()
	e.service("s3-writer", writeScript, "--mount", "type=cluster,src=s3-data,dst=/data")
	tk := e.waitRunning("s3-writer", 90*time.Second)
	t.Logf("writer running %s after docker service create", time.Since(start).Round(time.Millisecond))
	sum := strings.Fields(e.waitFile(tk, "/data/blob.sum", 60*time.Second))[0]

	u := e.usage(vid)
	t.Logf("while the writer runs:\n%s", u)
	if len(u.Loops) != 1 {
		t.Errorf("%d loop devices back %s while in use, want 1:\n%s", len(u.Loops), vid, u)
	}
	var staged bool
	for _, m := range u.Mounts {
		// Only the plugin's mount namespace has /data/staged (its
		// watcher may name any process there: the driver or rbd-fuse).
		if strings.HasPrefix(m.MountPoint, "/data/staged/") {
			staged = true
		}
	}
	if !staged {
		t.Errorf("no staging mount of %s in the plugin while in use:\n%s", vid, u)
	}

	e.removeService("s3-writer")
	released := e.waitReleased(vid, 30*time.Second)
	t.Logf("staging mount and loop device released %s after the writer's containers were gone", released.Round(time.Millisecond))
	log := e.pluginLogSince(e.n)
	t.Logf("RPCs so far: NodeStageVolume %d, NodePublishVolume %d, NodeUnpublishVolume %d, NodeUnstageVolume %d",
		countRPC(log, "NodeStageVolume"), countRPC(log, "NodePublishVolume"), countRPC(log, "NodeUnpublishVolume"), countRPC(log, "NodeUnstageVolume"))

	// Swarm must have finished unpublishing: a task placed before that
	// waits forever (README, "What Swarm does differently").
	e.waitUnpublished("s3-data", 60*time.Second)
	e.service("s3-reader", "true", "--mount", "type=cluster,src=s3-data,dst=/data")
	tk = e.waitRunning("s3-reader", 90*time.Second)
	e.checkOnVolume(tk, vid, "/data")
	got := strings.Fields(e.exec(tk, "sha256sum /data/blob"))[0]
	if got != sum {
		t.Fatalf("the new service reads sha256 %s, the writer wrote %s", got, sum)
	}
	t.Logf("the new service read the 16 MiB back: sha256 %s", got)
}
