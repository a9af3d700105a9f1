package loop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/filestore"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

func wantAttachments(t *testing.T, b *Backend, node string, want int64) {
	t.Helper()
	if n, err := b.NodeAttachments(context.Background(), node); err != nil || n != want {
		t.Fatalf("NodeAttachments(%s) = %d, %v; want %d", node, n, err, want)
	}
}

// Publish and Unpublish keep the index by node, which counts without
// reading the other volumes; a restarted process counts the same.
func TestNodeAttachments(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	var vols []*backend.Volume
	for i := range 4 {
		vols = append(vols, mustCreate(t, b, volSpec(fmt.Sprint("v", i), 16*backend.MiB)))
	}
	wantAttachments(t, b, "node-1", 0)
	for _, v := range vols[:3] {
		if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-1"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Publish(ctx, vols[0], backend.Attachment{NodeID: "node-2", ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	wantAttachments(t, b, "node-1", 3)
	wantAttachments(t, b, "node-2", 1)
	wantAttachments(t, reopen(t, dir), "node-1", 3)

	if err := b.Unpublish(ctx, vols[1].ID, "node-1"); err != nil {
		t.Fatal(err)
	}
	wantAttachments(t, b, "node-1", 2)
	// A marker a crash left for a volume since deleted is not counted.
	if err := b.Unpublish(ctx, vols[2].ID, "node-1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filestore.AttachmentsDir, "node-1", vols[2].ID), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVolume(ctx, vols[2].ID); err != nil {
		t.Fatal(err)
	}
	wantAttachments(t, reopen(t, dir), "node-1", 1)
	if exists(filepath.Join(dir, filestore.AttachmentsDir, "node-1", vols[2].ID)) {
		t.Error("the marker of a deleted volume is still there")
	}
}

// A data directory whose volumes were published before the index existed
// gets the index at start: the count includes them.
func TestNodeAttachmentsOfAnOlderDirectory(t *testing.T) {
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("old", 16*backend.MiB))
	if _, err := b.Publish(ctx, v, backend.Attachment{NodeID: "node-1"}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, filestore.AttachmentsDir)); err != nil {
		t.Fatal(err)
	}
	wantAttachments(t, reopen(t, dir), "node-1", 1)
}

// The per-node limit holds when many publishes to one node arrive at once:
// each counts with the ones before it recorded.
func TestNodeLimitUnderConcurrentPublishes(t *testing.T) {
	ctx := context.Background()
	b, _ := newBackend(t)
	if err := b.Register(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	const limit, n = 3, 10
	s := controller.New(b, limit)
	var ids []string
	for i := range n {
		ids = append(ids, mustCreate(t, b, volSpec(fmt.Sprint("v", i), 16*backend.MiB)).ID)
	}
	codesSeen := make([]codes.Code, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			_, err := s.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
				VolumeId: id, NodeId: "node-1",
				VolumeCapability: &csi.VolumeCapability{
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
				},
			})
			codesSeen[i] = csierr.Code(err)
		})
	}
	wg.Wait()
	ok := 0
	for _, c := range codesSeen {
		switch c {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
		default:
			t.Errorf("publish answered %v", c)
		}
	}
	if ok != limit {
		t.Fatalf("%d publishes succeeded, want %d: %v", ok, limit, codesSeen)
	}
	wantAttachments(t, b, "node-1", limit)
}

// VolumesPage and SnapshotsPage read a page, in id order, and say whether
// more follow.
func TestPages(t *testing.T) {
	ctx := context.Background()
	b, _ := newBackend(t)
	var want []string
	for i := range 7 {
		want = append(want, mustCreate(t, b, volSpec(fmt.Sprint("v", i), 16*backend.MiB)).ID)
	}
	slices.Sort(want)
	var got []string
	after := ""
	for pages := 1; ; pages++ {
		vols, more, err := b.VolumesPage(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vols {
			got = append(got, v.ID)
		}
		if !more {
			if pages != 3 {
				t.Errorf("%d pages of at most 3 for 7 volumes", pages)
			}
			break
		}
		after = vols[len(vols)-1].ID
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages hold %v, want %v", got, want)
	}

	var fromFirst []string
	for i, src := range []string{want[0], want[1], want[0]} {
		sn, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: fmt.Sprint("s", i), SourceVolumeID: src})
		if err != nil {
			t.Fatal(err)
		}
		if src == want[0] {
			fromFirst = append(fromFirst, sn.ID)
		}
	}
	slices.Sort(fromFirst)
	keep := func(sn *backend.Snapshot) bool { return sn.SourceVolumeID == want[0] }
	snaps, more, err := b.SnapshotsPage(ctx, "", 1, keep)
	if err != nil || !more || len(snaps) != 1 || snaps[0].ID != fromFirst[0] {
		t.Fatalf("first page of the snapshots of %s: %v, more %t, %v", want[0], snaps, more, err)
	}
	snaps, more, err = b.SnapshotsPage(ctx, snaps[0].ID, 1, keep)
	if err != nil || more || len(snaps) != 1 || snaps[0].ID != fromFirst[1] {
		t.Fatalf("second page of the snapshots of %s: %v, more %t, %v", want[0], snaps, more, err)
	}
}

// Names are looked up in the names index, without a listing; a name whose
// creation has not finished names nothing yet.
func TestNamed(t *testing.T) {
	ctx := context.Background()
	b, _ := newBackend(t)
	v := mustCreate(t, b, volSpec("db", 16*backend.MiB))
	if got, err := b.VolumeNamed(ctx, "db"); err != nil || got.ID != v.ID {
		t.Fatalf("VolumeNamed(db) = %v, %v; want %s", got, err, v.ID)
	}
	sn, err := b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: "before", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.SnapshotNamed(ctx, "before"); err != nil || got.ID != sn.ID {
		t.Fatalf("SnapshotNamed(before) = %v, %v; want %s", got, err, sn.ID)
	}
	id, err := filestore.NewID(volumePrefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.ClaimName(volumePrefix, "half-made", id, ValidVolumeID); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nope", "half-made", "before"} {
		if _, err := b.VolumeNamed(ctx, name); !isNotFound(err) {
			t.Errorf("VolumeNamed(%s): %v, want NotFound", name, err)
		}
	}
	if _, err := b.SnapshotNamed(ctx, "db"); !isNotFound(err) {
		t.Errorf("SnapshotNamed(db): %v, want NotFound", err)
	}
}
