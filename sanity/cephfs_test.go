package sanity

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/cephfs"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// The cephfs backend against a throwaway Ceph cluster with a file system
// (scripts/ceph-cluster with CEPH_FS), brought up for the mode and taken
// down after it, once every ceph-fuse of the run is gone. Mount access
// only: a cephfs volume is a subvolume. The driver must be the Ceph build:
// go test -tags ceph,pacific ./sanity -run TestSanity/cephfs.
func init() {
	modes = append(modes, mode{
		name:        "cephfs",
		accessType:  "mount",
		setup:       cephfsSetup,
		unsupported: cephfsUnsupported,
	})
}

// cephfsUnsupported: the backend has no mutable parameters.
var cephfsUnsupported = dirUnsupported[:2]

func cephfsSetup(t *testing.T, dir string) ([]string, []string) {
	if !cephfs.CephSupport {
		testenv.Require(t, "the cephfs mode needs the Ceph build of the driver: go test -tags ceph,pacific ./sanity")
	}
	testenv.Require(t, cephtest.MissingFS())
	c, err := cephtest.StartFS(context.Background(), "")
	if err != nil {
		t.Fatalf("bringing up the test Ceph cluster: %v", err)
	}
	t.Logf("Ceph cluster with a file system up in %s (mon %s)", c.StartTime.Round(100e6), c.MonHost)
	// Runs after the driver has stopped (cleanups run last first): no
	// mount may be left, and none may outlive the cluster.
	t.Cleanup(func() {
		if left := cephtest.KillFuse(dir); len(left) > 0 {
			t.Errorf("ceph-fuse mounts left after the run: %v", left)
		}
		out, err := c.Admin(context.Background(), "ceph", "fs", "subvolume", "ls", c.FS, "--group_name", "sanity")
		if err != nil {
			t.Errorf("listing the subvolumes after the run: %v", err)
		} else if s := string(out); s != "[]\n" && s != "[]" {
			t.Errorf("subvolumes left after the run: %s", s)
		}
		if t.Failed() {
			t.Logf("the mgr's log, last lines:\n%s", c.LogTail("mgr.x", 60))
		}
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "taking the test Ceph cluster down:", err)
		}
	})
	return []string{
		"--backend", "cephfs",
		"--cephfs-monitors", c.MonHost,
		"--cephfs-user", c.FSUser,
		"--cephfs-keyring", c.FSKeyring,
		"--cephfs-fs", c.FS,
		"--cephfs-group", "sanity",
		"--cephfs-client", "fuse",
		// csi-sanity does not retry the Aborted a clone still running
		// answers, and a clone takes 2.5-7 s, longer on a busy machine.
		"--cephfs-clone-wait", "2m",
	}, nil
}
