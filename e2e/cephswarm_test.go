package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// cephBackend is what a swarm on a throwaway Ceph cluster needs to know of
// one of the plugin's Ceph backends.
type cephBackend struct {
	name string
	// start brings the cluster up in a network namespace, on an address.
	start func(ctx context.Context, netns, addr string) (*cephtest.Cluster, error)
	// keyring is the file of the user the plugin runs as.
	keyring func(*cephtest.Cluster) string
	// settings are the plugin's, given that user's keyring at keyringPath.
	settings func(*cephtest.Cluster) []string
}

// keyringPath is where the plugins read the cluster user's keyring: the
// swarm's data directory, seen from inside a plugin.
const keyringPath = "/var/lib/swarm-csi/ceph.keyring"

// startCephSwarm brings up a swarm of n nodes with the Ceph flavour of the
// plugin set to backend b, and a throwaway Ceph cluster in the manager's
// network namespace, on its address on the bridge, so that every node
// reaches it. Both go at the end of the test, the swarm first: its
// plugins hold images open and FUSE mounts of the cluster, and anything
// touching a FUSE mount whose cluster is gone hangs.
func startCephSwarm(t *testing.T, ctx context.Context, n int, b cephBackend) (*harness.Cluster, *cephtest.Cluster) {
	t.Helper()
	var cl *cephtest.Cluster
	c, err := harness.Start(ctx, logf, harness.Options{
		Nodes: n, Flavour: "rbd", Backend: b.name,
		Setup: func(ctx context.Context, c *harness.Cluster) ([]string, error) {
			var err error
			if cl, err = b.start(ctx, c.Manager().NetNS, c.Manager().Addr); err != nil {
				return nil, err
			}
			logf("ceph cluster for %s up in %s in %s on %s", b.name, cl.StartTime.Round(time.Millisecond), c.Manager().NetNS, c.Manager().Addr)
			key, err := os.ReadFile(b.keyring(cl))
			if err == nil {
				err = os.WriteFile(filepath.Join(c.DataDir, "ceph.keyring"), key, 0o600)
			}
			return b.settings(cl), err
		},
	})
	t.Cleanup(func() {
		if cl == nil {
			return
		}
		if c != nil {
			ms, _ := harness.ReadMountinfo("/proc/self/mountinfo")
			for _, m := range ms {
				if strings.HasPrefix(m.FSType, "fuse.") && strings.HasPrefix(m.MountPoint, c.Root+"/") {
					t.Errorf("a FUSE mount outlived the swarm: %s (%s)", m.MountPoint, m.FSType)
					syscall.Unmount(m.MountPoint, syscall.MNT_DETACH)
				}
			}
		}
		if err := cl.Stop(); err != nil {
			t.Errorf("ceph cluster: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("bring up the %s swarm: %v", b.name, err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the %s swarm left something behind:\n%v", b.name, err)
		}
	})
	return c, cl
}

// rbdBackend attaches images through rbd-fuse, as this machine has no krbd.
var rbdBackend = cephBackend{
	name:    "rbd",
	start:   cephtest.StartAt,
	keyring: func(cl *cephtest.Cluster) string { return cl.Keyring },
	settings: func(cl *cephtest.Cluster) []string {
		return []string{"BACKEND=rbd", "RBD_ATTACH=fuse", "RBD_MONITORS=" + cl.MonHost, "RBD_POOL=" + cl.Pool,
			"RBD_USER=" + cl.User, "RBD_KEYRING=" + keyringPath, "RBD_PREFIX=e2e"}
	},
}

// cephfsBackend mounts through ceph-fuse, on a cluster with a file system.
var cephfsBackend = cephBackend{
	name:    "cephfs",
	start:   cephtest.StartFSAt,
	keyring: func(cl *cephtest.Cluster) string { return cl.FSKeyring },
	settings: func(cl *cephtest.Cluster) []string {
		return []string{"BACKEND=cephfs", "CEPHFS_CLIENT=fuse", "CEPHFS_MONITORS=" + cl.MonHost, "CEPHFS_FS=" + cl.FS,
			"CEPHFS_USER=" + cl.FSUser, "CEPHFS_KEYRING=" + keyringPath}
	},
}
