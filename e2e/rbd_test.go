package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// rbdLoop matches the loop devices of an rbd volume attached through
// rbd-fuse: the driver tags them "<hash>@<node-tag>", the hash being the
// end of the image name "<prefix>-vol-<hash>" in the id "<pool>/<image>".
func rbdLoop(volumeID string) func(harness.Loop) bool {
	image := path.Base(volumeID)
	_, hash, ok := strings.Cut(image, "-vol-")
	return func(l harness.Loop) bool {
		return ok && strings.HasPrefix(l.FileName, hash+"@")
	}
}

// The rbd backend under Swarm: the rbd flavour of the plugin, on a
// single-node swarm of its own, against a throwaway Ceph cluster that runs
// in the node's network namespace (on its 127.0.0.1), attaching through
// rbd-fuse (this kernel has neither rbd nor nbd). Scenarios 2 and 3, then
// no image of the test is left in the pool.
func TestRBD(t *testing.T) {
	requireSwarm(t)
	testenv.Require(t, cephtest.Missing())
	var cl *cephtest.Cluster
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := harness.Start(ctx, logf, harness.Options{
		Nodes: 1, Flavour: "rbd", Backend: "rbd",
		Setup: func(ctx context.Context, c *harness.Cluster) ([]string, error) {
			var err error
			if cl, err = cephtest.StartIn(ctx, c.Manager().NetNS); err != nil {
				return nil, err
			}
			logf("ceph cluster up in %s in %s", cl.StartTime.Round(time.Millisecond), c.Manager().NetNS)
			// The keyring goes where the plugin sees it: its data mount.
			key, err := os.ReadFile(cl.Keyring)
			if err == nil {
				err = os.WriteFile(filepath.Join(c.DataDir, "ceph.keyring"), key, 0o600)
			}
			return []string{"BACKEND=rbd", "RBD_ATTACH=fuse", "RBD_MONITORS=" + cl.MonHost, "RBD_POOL=" + cl.Pool,
				"RBD_USER=" + cl.User, "RBD_KEYRING=/var/lib/swarm-csi/ceph.keyring", "RBD_PREFIX=e2e"}, err
		},
	})
	// The swarm goes first: its plugin holds the images open.
	defer func() {
		if cl == nil {
			return
		}
		if err := cl.Stop(); err != nil {
			t.Errorf("ceph cluster: %v", err)
		}
	}()
	if err != nil {
		t.Fatalf("bring up the rbd swarm: %v", err)
	}
	logf("rbd swarm up in %s", time.Since(start).Round(time.Millisecond))
	defer func() {
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the rbd swarm left something behind:\n%v", err)
		}
	}()

	t.Run("volume create", func(t *testing.T) { testVolumeCreate(t, c) })
	t.Run("data survives service removal", func(t *testing.T) { testDataSurvives(t, c) })
	t.Run("clone from", func(t *testing.T) {
		testCloneFrom(t, c, func() int {
			images, _, err := cl.Images(ctx, "e2e-vol-")
			if err != nil {
				t.Fatal(err)
			}
			return len(images)
		})
	})

	// The subtests removed their volumes, and Swarm deletes them in the
	// background: soon nothing of theirs is left in the pool but the
	// driver's record index.
	var left []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		images, trash, err := cl.Images(ctx, "e2e-")
		if err != nil {
			t.Fatal(err)
		}
		left = append(slices.DeleteFunc(images, func(i string) bool { return i == "e2e-index" }), trash...)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("images left in the pool a minute after their volumes were removed: %v\n%s", left, c.Manager().PluginLog())
	}
	out, err := cl.Admin(ctx, "ceph", "df", "--format", "json")
	if err == nil {
		var df struct {
			Stats struct {
				TotalUsedBytes int64 `json:"total_used_bytes"`
			} `json:"stats"`
		}
		_ = json.Unmarshal(out, &df)
		t.Logf("the cluster uses %d MiB at the end", df.Stats.TotalUsedBytes>>20)
	}
}
