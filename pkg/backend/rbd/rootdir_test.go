package rbd

import (
	"context"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// The owner and mode of a volume's root are in its record, which the node
// reads without a publish context.
func TestRootDirInRecord(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, newFakeCeph())
	want := backend.RootDir{UID: 1000, GID: 1000, Mode: 0o750}
	v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "owned", CapacityBytes: 32 * backend.MiB, FsType: "ext4", Root: &want})
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.ForNode("node-1", ModeKRBD)
	if err != nil {
		t.Fatal(err)
	}
	for what, read := range map[string]func(context.Context, string) (*backend.Volume, error){"controller": b.Volume, "node": n.Volume} {
		got, err := read(ctx, v.ID)
		if err != nil || got.Root == nil || *got.Root != want {
			t.Fatalf("%s: root %+v, %v; want %+v", what, got, err, want)
		}
	}
	if again, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "owned", CapacityBytes: 32 * backend.MiB, FsType: "ext4"}); err != nil || again.Root == nil || *again.Root != want {
		t.Fatalf("a retry returns root %+v, %v; want the recorded %+v for the caller to compare", again.Root, err, want)
	}
}
