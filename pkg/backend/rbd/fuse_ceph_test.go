//go:build ceph && cgo

package rbd

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// In fuse mode a single-node volume's loop device keeps the page cache and
// a multi-node writer's reads and writes past it; every stage decides
// alike, and one finding a device attached otherwise (by a release that
// always used direct I/O) switches it.
func TestFuseAttachDirectIO(t *testing.T) {
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl, err := cephtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	})
	b, err := New(Config{Monitors: cl.MonHost, Pool: cl.Pool, User: cl.User, Keyring: cl.Keyring,
		Prefix: "dio", StateDir: filepath.Join(t.TempDir(), "rbd")})
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.ForNode("node-1", ModeFuse)
	if err != nil {
		t.Fatal(err)
	}
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
			v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "dio-" + tc.mode, CapacityBytes: 32 * backend.MiB,
				Block: tc.block, AccessMode: tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := n.Detach(ctx, v.ID); err != nil {
					t.Error(err)
				}
				if err := b.DeleteVolume(ctx, v.ID); err != nil {
					t.Error(err)
				}
			})
			dev, err := n.Attach(ctx, v, nil)
			if err != nil {
				t.Fatal(err)
			}
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
