package sanity

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// The rbd backend against a throwaway Ceph cluster (scripts/ceph-cluster),
// brought up once for its modes and taken down after the last test.
// Nodes attach through rbd-fuse and loop devices: this kernel has neither
// the rbd nor the nbd module. Each mode has a prefix of its own, so its
// images and records are its own, and after its run none may be left.
func init() {
	modes = append(modes,
		mode{name: "rbd-ext4", accessType: "mount", params: map[string]string{"fsType": "ext4"}, setup: rbdSetup("rbd-ext4"), mutable: rbdMutable},
		mode{name: "rbd-xfs", accessType: "mount", params: map[string]string{"fsType": "xfs"}, requires: []string{"mkfs.xfs"}, setup: rbdSetup("rbd-xfs"), mutable: rbdMutable},
		mode{name: "rbd-block", accessType: "block", setup: rbdSetup("rbd-block"), mutable: rbdMutable},
		mode{name: "rbd-defaults", defaults: true, setup: rbdSetup("rbd-defaults"), unsupported: []unsupportedSpecs{attachLimitOff}},
	)
}

var (
	cephOnce    sync.Once
	cephCluster *cephtest.Cluster
	cephErr     error
)

// sharedCeph starts the cluster on first use; TestMain takes it down.
func sharedCeph(t *testing.T) *cephtest.Cluster {
	t.Helper()
	if why := cephtest.Missing(); why != "" {
		testenv.Require(t, "rbd modes: "+why)
	}
	cephOnce.Do(func() {
		cephCluster, cephErr = cephtest.Start(context.Background())
		if cephErr == nil {
			afterAll = append(afterAll, func() {
				if err := cephCluster.Stop(); err != nil {
					fmt.Fprintln(os.Stderr, "taking the test Ceph cluster down:", err)
				}
			})
		}
	})
	if cephErr != nil {
		t.Fatalf("bringing up the test Ceph cluster: %v", cephErr)
	}
	return cephCluster
}

func rbdSetup(prefix string) func(t *testing.T, dir string) ([]string, []string) {
	return func(t *testing.T, dir string) ([]string, []string) {
		c := sharedCeph(t)
		t.Logf("Ceph cluster up in %s (mon %s, pool %s)", c.StartTime.Round(100e6), c.MonHost, c.Pool)
		// Runs after the driver has stopped (cleanups run last first).
		t.Cleanup(func() {
			images, trash, err := c.Images(context.Background(), prefix+"-")
			if err != nil {
				t.Errorf("listing the pool after the run: %v", err)
				return
			}
			for _, i := range images {
				if i != prefix+"-index" {
					t.Errorf("left behind in pool %s: image %s", c.Pool, i)
				}
			}
			for _, i := range trash {
				t.Errorf("left behind in the trash of pool %s: image %s", c.Pool, i)
			}
		})
		return []string{
			"--backend", "rbd",
			"--rbd-monitors", c.MonHost,
			"--rbd-pool", c.Pool,
			"--rbd-user", c.User,
			"--rbd-keyring", c.Keyring,
			"--rbd-attach", "fuse",
			"--rbd-prefix", prefix,
		}, nil
	}
}

// rbdMutable is a QoS limit high enough not to slow the suite down.
var rbdMutable = map[string]string{"qosIopsLimit": "100000"}
