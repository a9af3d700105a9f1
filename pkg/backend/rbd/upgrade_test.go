//go:build ceph && cgo

package rbd

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// A cluster whose volumes, snapshots and nodes were recorded by the release
// that drove the rbd tool (one `rbd` process per step, records as metadata
// of <prefix>-index) is read and managed as it is by the in-process
// backend: nothing to migrate.
func TestUpgradeFromToolRecords(t *testing.T) {
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := startCluster(t, ctx)
	rbdTool := func(args ...string) []byte {
		t.Helper()
		out, err := cl.Admin(ctx, "rbd", args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	meta := func(image, key string, v any) {
		t.Helper()
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		rbdTool("image-meta", "set", cl.Pool+"/"+image, key, "--", string(b))
	}

	// What the tool-driven release did for a volume "pgdata" of 64 MiB
	// published to a node "node-1", and a snapshot "nightly" of it,
	// command by command. It kept no index of attachments by node.
	n := names{prefix: "upg"}
	hash, snapHash := nameHash("pgdata"), nameHash("nightly")
	index, image := n.index(), n.volumeImage(hash)
	ref := imageRef{cl.Pool, image}
	snap := snapRef{ref, n.snapshotName(snapHash)}
	created := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	spec := backend.VolumeSpec{Name: "pgdata", CapacityBytes: 64 * backend.MiB, FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER"}
	rbdTool("create", "--size", "64M", ref.String())
	meta(image, metaName, "pgdata")
	rbdTool("create", "--size", "0", "--image-feature", "layering", cl.Pool+"/"+index)
	meta(index, volumeKeyPrefix+hash, volumeRecord{
		Volume: backend.Volume{ID: ref.String(), VolumeSpec: spec, CreatedAt: created,
			Attachments: []backend.Attachment{{NodeID: "node-1"}}},
		Pool: cl.Pool, Image: image,
	})
	rbdTool("snap", "create", "--no-progress", snap.String())
	meta(index, snapshotKeyPrefix+snapHash, snapshotRecord{
		Snapshot: backend.Snapshot{ID: snap.String(), SizeBytes: spec.CapacityBytes, CreatedAt: created,
			SnapshotSpec: backend.SnapshotSpec{Name: "nightly", SourceVolumeID: ref.String()}},
		Pool: cl.Pool, Image: image, Snap: snap.snap,
	})
	meta(index, nodeKeyPrefix+"node-1", nodeRecord{RegisteredAt: created, AttachMode: ModeFuse})

	b, err := New(Config{Monitors: cl.MonHost, Pool: cl.Pool, User: cl.User, Keyring: cl.Keyring,
		Prefix: "upg", StateDir: filepath.Join(t.TempDir(), "rbd")})
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.Volume(ctx, ref.String())
	if err != nil || v.Name != "pgdata" || v.CapacityBytes != spec.CapacityBytes || !v.CreatedAt.Equal(created) {
		t.Fatalf("Volume = %+v, %v", v, err)
	}
	if again, err := b.CreateVolume(ctx, spec); err != nil || again.ID != v.ID {
		t.Fatalf("CreateVolume of the recorded name = %+v, %v; want the recorded volume", again, err)
	}
	vols, err := b.ListVolumes(ctx)
	if err != nil || len(vols) != 1 || vols[0].ID != v.ID {
		t.Fatalf("ListVolumes = %v, %v", vols, err)
	}
	snaps, err := b.ListSnapshots(ctx)
	if err != nil || len(snaps) != 1 || snaps[0].ID != snap.String() {
		t.Fatalf("ListSnapshots = %v, %v", snaps, err)
	}
	if known, err := b.NodeKnown(ctx, "node-1"); err != nil || !known {
		t.Fatalf("NodeKnown(node-1) = %v, %v", known, err)
	}

	// The node's attachments are counted right from the first count, which
	// indexes them.
	count := func(want int64) {
		t.Helper()
		if n, err := b.NodeAttachments(ctx, "node-1"); err != nil || n != want {
			t.Fatalf("NodeAttachments(node-1) = %d, %v; want %d", n, err, want)
		}
	}
	count(1)
	if err := b.DeleteVolume(ctx, v.ID); csierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteVolume of a published volume: %v", err)
	}
	if err := b.Unpublish(ctx, v.ID, "node-1"); err != nil {
		t.Fatal(err)
	}
	count(0)

	// Managed as any volume from here on: restore the snapshot, grow,
	// publish, and delete it all.
	restored, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "restored", CapacityBytes: 128 * backend.MiB,
		FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER", Source: &backend.Source{SnapshotID: snap.String()}})
	if err != nil {
		t.Fatalf("restore the recorded snapshot: %v", err)
	}
	if size, err := b.ExpandVolume(ctx, v.ID, 96*backend.MiB); err != nil || size != 96*backend.MiB {
		t.Fatalf("ExpandVolume = %d, %v", size, err)
	}
	if v, err = b.Volume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-1"}); err != nil {
		t.Fatal(err)
	}
	count(1)
	if err := b.Unpublish(ctx, v.ID, "node-1"); err != nil {
		t.Fatal(err)
	}
	count(0)
	for _, step := range []func() error{
		func() error { return b.DeleteSnapshot(ctx, snap.String()) },
		func() error { return b.DeleteVolume(ctx, v.ID) },
		func() error { return b.DeleteVolume(ctx, restored.ID) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	images, trash, err := cl.Images(ctx, "upg-")
	if err != nil || !slices.Equal(images, []string{index}) || len(trash) != 0 {
		t.Fatalf("left: images %v, trash %v, %v; want only %s", images, trash, err, index)
	}
}
