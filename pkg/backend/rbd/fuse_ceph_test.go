//go:build ceph && cgo

package rbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/loopdev"
)

// In fuse mode a single-node volume's loop device keeps the page cache and
// a multi-node writer's reads and writes past it; every stage decides
// alike, and one finding a device attached otherwise (by a release that
// always used direct I/O) switches it.
func TestFuseAttachDirectIO(t *testing.T) {
	ctx, n := fuseNode(t, "dio")
	loops := n.att.(*fuseAttacher).loops
	for _, tc := range []struct {
		mode  string
		block bool
		want  bool
	}{
		{"SINGLE_NODE_WRITER", false, false},
		{"MULTI_NODE_MULTI_WRITER", true, true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			v, dev := attachVolume(ctx, t, n, backend.VolumeSpec{Name: "dio-" + tc.mode, CapacityBytes: 32 * backend.MiB,
				Block: tc.block, AccessMode: tc.mode})
			check := func(when string) {
				t.Helper()
				if on, err := loops.DirectIO(dev); on != tc.want || err != nil {
					t.Fatalf("%s: %s direct I/O %v, %v; want %v", when, dev, on, err, tc.want)
				}
			}
			check("attached")
			again, err := n.Attach(ctx, v, nil)
			if err != nil || again != dev {
				t.Fatalf("attach again = %q, %v; want %s", again, err, dev)
			}
			check("attached again")
			if switched, err := loops.SetDirectIO(dev, !tc.want); !switched || err != nil {
				t.Fatalf("%s: switch direct I/O to %v for the test: %v, %v", dev, !tc.want, switched, err)
			}
			if again, err = n.Attach(ctx, v, nil); err != nil || again != dev {
				t.Fatalf("attach a device attached otherwise = %q, %v; want %s", again, err, dev)
			}
			check("attached after the device was switched")
		})
	}
}

// A volume whose rbd-fuse no longer answers (stopped here; a stuck daemon
// or a cluster gone does the same) stalls the calls about it, but not the
// search for any other loop device: the kernel answers a loop device's
// status only after asking its file's filesystem for the file's inode.
func TestHungFuseStallsOnlyItsVolume(t *testing.T) {
	ctx, n := fuseNode(t, "hang")
	devs := map[string]string{}
	vols := map[string]*backend.Volume{}
	for _, name := range []string{"hung", "other"} {
		vols[name], devs[name] = attachVolume(ctx, t, n, backend.VolumeSpec{Name: name, CapacityBytes: 32 * backend.MiB,
			AccessMode: "SINGLE_NODE_WRITER"})
	}
	ref, _, _ := n.names.parseVolumeID(vols["hung"].ID)
	f := n.att.(*fuseAttacher)
	pids := fusePIDs(f.mountPoint(ref))
	if len(pids) != 1 {
		t.Fatalf("rbd-fuse processes of %s: %v", ref, pids)
	}
	if err := unix.Kill(pids[0], unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Killed, rbd-fuse ends its connection: whatever waits on it returns.
	// Its device and mount go before the volume's own cleanup.
	t.Cleanup(func() {
		_ = unix.Kill(pids[0], unix.SIGKILL)
		_ = f.loops.Detach(devs["hung"])
		_ = unix.Unmount(f.mountPoint(ref), unix.MNT_DETACH)
	})
	// The hang is real: the hung device's status waits on rbd-fuse, once
	// the kernel's cached attributes of the file (1 s) have expired.
	status := make(chan error, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		_, err := f.loops.Status(devs["hung"])
		status <- err
	}()
	select {
	case err := <-status:
		t.Fatalf("the status of the device of a stopped rbd-fuse's file answered: %v", err)
	case <-time.After(3 * time.Second):
	}

	healthy := loopdev.New()
	attached, loose := filepath.Join(t.TempDir(), "attached"), filepath.Join(t.TempDir(), "loose")
	for _, file := range []string{attached, loose} {
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(file, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	tag := loopdev.Tag("healthy", "node")
	dev, err := healthy.Attach(attached, tag, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = healthy.Detach(dev) })
	// A process that knows no device (restarted) looks through all of them.
	promptly(t, "Find of an attached file", func() {
		if got, err := loopdev.New().Find(attached, tag); got != dev || err != nil {
			t.Errorf("Find = %q, %v; want %s", got, err, dev)
		}
	})
	promptly(t, "Find of a file attached nowhere", func() {
		if got, err := loopdev.New().Find(loose, tag); got != "" || err != nil {
			t.Errorf("Find = %q, %v; want none", got, err)
		}
	})
	restarted, err := n.ForNode("node-1", ModeFuse)
	if err != nil {
		t.Fatal(err)
	}
	promptly(t, "the other rbd volume's device, after a restart", func() {
		if got, err := restarted.Device(ctx, vols["other"].ID); got != devs["other"] || err != nil {
			t.Errorf("Device = %q, %v; want %s", got, err, devs["other"])
		}
	})
	// The hung volume's own calls end with their context, Unavailable, the
	// second one without leaving another stat behind.
	for i := range 2 {
		promptly(t, "the hung volume's device", func() {
			callCtx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			got, err := restarted.Device(callCtx, vols["hung"].ID)
			if !errors.Is(err, csierr.ErrUnavailable) || !strings.Contains(err.Error(), "does not answer") {
				t.Errorf("Device of the hung volume #%d = %q, %v; want Unavailable", i+1, got, err)
			}
		})
	}
	rf := restarted.att.(*fuseAttacher)
	rf.mu.Lock()
	pending := len(rf.stats)
	rf.mu.Unlock()
	if pending != 1 {
		t.Errorf("%d stats under way, want the one of the hung file", pending)
	}
}

// promptly runs f, and fails the test if it has not returned within 10 s:
// a hang detector, not a measure.
func promptly(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s has not returned after 10 s", what)
	}
}

// fuseNode starts a test cluster and returns a context for the test (it
// ends after the test's cleanups) and the node "node-1" of a backend on
// the cluster whose names start with prefix, attaching in fuse mode.
func fuseNode(t *testing.T, prefix string) (context.Context, *NodeSide) {
	t.Helper()
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	cl := startCluster(t, ctx)
	b, err := New(Config{Monitors: cl.MonHost, Pool: cl.Pool, User: cl.User, Keyring: cl.Keyring,
		Prefix: prefix, StateDir: filepath.Join(t.TempDir(), "rbd")})
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.ForNode("node-1", ModeFuse)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, n
}

// attachVolume creates a volume of spec and attaches it on n; the test's
// cleanup detaches and deletes it.
func attachVolume(ctx context.Context, t *testing.T, n *NodeSide, spec backend.VolumeSpec) (*backend.Volume, string) {
	t.Helper()
	v, err := n.CreateVolume(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Detach(ctx, v.ID); err != nil {
			t.Error(err)
		}
		if err := n.DeleteVolume(ctx, v.ID); err != nil {
			t.Error(err)
		}
	})
	dev, err := n.Attach(ctx, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v, dev
}
