package rbd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Remove refuses an image that is open or has snapshots and changes
// nothing; DeleteVolume then says why, removes what a failed clone left,
// or sends an image that only clones still need to the trash.
func TestDeleteVolumeDecisions(t *testing.T) {
	busy := &Error{Kind: KindBusy, Cmd: "rbd rm", Msg: "(16) Device or resource busy"}
	temp := (names{"test"}).cloneSnapshot(nameHash("c"))
	tests := []struct {
		name     string
		rmErrs   []error
		watchers []string
		snaps    map[string]string // name: namespace
		code     codes.Code
		want     string // the operations, in order
	}{
		{"removed", nil, nil, nil, codes.OK, "image-meta get,rm,image-meta remove"},
		{"gone already", []error{notFound("rbd/x")}, nil, nil, codes.OK, "image-meta get,rm,image-meta remove"},
		{"attached somewhere", []error{busy}, []string{"10.0.0.7:0/1"}, nil, codes.FailedPrecondition, "image-meta get,rm,status"},
		{"user snapshots", []error{busy}, nil, map[string]string{"test-snap-1": snapUser}, codes.FailedPrecondition,
			"image-meta get,rm,status,snap ls"},
		{"clones only", []error{busy}, nil, map[string]string{"0f1e": snapTrash}, codes.OK,
			"image-meta get,rm,status,snap ls,trash mv,image-meta remove"},
		{"a failed clone's snapshot", []error{busy}, nil, map[string]string{temp: snapUser}, codes.OK,
			"image-meta get,rm,status,snap ls,snap rm,rm,image-meta remove"},
		{"busy otherwise", []error{busy}, nil, nil, codes.FailedPrecondition, "image-meta get,rm,status,snap ls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFakeCeph()
			b := newTestBackend(t, f)
			v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "v", CapacityBytes: 32 * backend.MiB})
			if err != nil {
				t.Fatal(err)
			}
			img := f.images[v.ID]
			img.watchers = tt.watchers
			for name, ns := range tt.snaps {
				s := &fakeSnap{name: name}
				if ns == snapTrash {
					s.trash, s.children = true, 1 // a clone still needs it
				}
				img.snaps[name] = s
			}
			f.ops, f.errs = nil, map[string][]error{"rm": tt.rmErrs}
			err = b.DeleteVolume(ctx, v.ID)
			if csierr.Code(err) != tt.code {
				t.Fatalf("DeleteVolume: %v, want %v", err, tt.code)
			}
			if got := strings.Join(f.opsDone(), ","); got != tt.want {
				t.Fatalf("ran %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Ids that are not this cluster's volumes are never touched: nothing is
// asked of Ceph for them.
func TestForeignIDsRunNothing(t *testing.T) {
	f := newFakeCeph()
	b := newTestBackend(t, f)
	ctx := context.Background()
	for _, id := range []string{"rbd/important", "rbd/other-vol-" + nameHash("x"), "../../etc", ""} {
		if err := b.DeleteVolume(ctx, id); err != nil {
			t.Errorf("DeleteVolume(%q): %v", id, err)
		}
		if _, err := b.Volume(ctx, id); csierr.Code(err) != codes.NotFound {
			t.Errorf("Volume(%q): %v", id, err)
		}
		if err := b.DeleteSnapshot(ctx, id+"@x"); err != nil {
			t.Errorf("DeleteSnapshot(%q): %v", id, err)
		}
	}
	if ops := f.opsDone(); len(ops) != 0 {
		t.Fatalf("operations: %v", ops)
	}
}

func TestMutableParameters(t *testing.T) {
	if err := checkMutable(map[string]string{ParamQoSIOPS: "500", ParamQoSBPS: "0"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{{ParamQoSIOPS: "-1"}, {ParamQoSBPS: "1e6"}, {"directIO": "true"}} {
		if err := checkMutable(bad); csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v", bad, err)
		}
	}
	f := newFakeCeph()
	b := newTestBackend(t, f)
	ref := imageRef{"rbd", b.names.volumeImage(nameHash("q"))}
	if err := f.Create(context.Background(), b.creds, ref, backend.MiB, imageOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.applyMutable(context.Background(), b.creds, ref, map[string]string{ParamQoSIOPS: "500", ParamQoSBPS: "0"}); err != nil {
		t.Fatal(err)
	}
	if m := f.images[ref.String()].meta; len(m) != 2 || m["conf_rbd_qos_bps_limit"] != "0" || m["conf_rbd_qos_iops_limit"] != "500" {
		t.Fatalf("image options %v", m)
	}
}

// Pages of volumes and snapshots go through every one once, in the order
// of their keys (the ids' in one pool), each page reading its own records
// and one more; a page may start after a volume deleted since.
func TestPages(t *testing.T) {
	ctx := context.Background()
	e := newAttEnv(t, 30)
	for i, v := range e.vols[:12] {
		if _, err := e.b.CreateSnapshot(ctx, backend.SnapshotSpec{Name: fmt.Sprint("s", i), SourceVolumeID: v.ID}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := e.b.ListVolumes(ctx)
	if err != nil || len(all) != 30 {
		t.Fatalf("ListVolumes: %d, %v", len(all), err)
	}
	for _, max := range []int{0, 1, 7, 29, 30, 31} {
		var got []string
		after, pages := "", 0
		for {
			before := e.f.listed
			page, more, err := e.b.VolumesPage(ctx, after, max)
			if err != nil {
				t.Fatal(err)
			}
			if read := e.f.listed - before; max > 0 && read > max+1 {
				t.Errorf("a page of %d read %d records", max, read)
			}
			for _, v := range page {
				got = append(got, v.ID)
			}
			pages++
			if !more {
				break
			}
			after = page[len(page)-1].ID
		}
		want := make([]string, len(all))
		for i, v := range all {
			want[i] = v.ID
		}
		if !slices.Equal(got, want) {
			t.Errorf("pages of %d: %v, want %v", max, got, want)
		}
		if max > 0 && pages != (30+max-1)/max {
			t.Errorf("pages of %d: %d pages", max, pages)
		}
	}
	// After a volume that is gone: from its place on.
	gone := e.vols[20].ID // no snapshots
	p := slices.IndexFunc(all, func(v *backend.Volume) bool { return v.ID == gone })
	if err := e.b.DeleteVolume(ctx, gone); err != nil {
		t.Fatal(err)
	}
	next, _, err := e.b.VolumesPage(ctx, gone, 2)
	if want := all[p+1 : min(p+3, len(all))]; err != nil || len(next) != len(want) || (len(want) > 0 && next[0].ID != want[0].ID) {
		t.Errorf("after %s: %v, %v; want %v", gone, next, err, want)
	}
	for _, bad := range []string{"x", "rbd/other-vol-0123", gone + "@test-snap-0"} {
		if _, _, err := e.b.VolumesPage(ctx, bad, 2); csierr.Code(err) != codes.Aborted {
			t.Errorf("VolumesPage after %q: %v", bad, err)
		}
	}

	// Snapshots, with a filter: a page holds those it keeps.
	snaps, err := e.b.ListSnapshots(ctx)
	if err != nil || len(snaps) != 12 {
		t.Fatalf("ListSnapshots: %d, %v", len(snaps), err)
	}
	var got []string
	after := ""
	for {
		page, more, err := e.b.SnapshotsPage(ctx, after, 5, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, sn := range page {
			got = append(got, sn.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if len(got) != 12 || !slices.Equal(sorted(got), ids(snaps)) {
		t.Errorf("snapshot pages: %v", got)
	}
	src := snaps[4].SourceVolumeID
	one, more, err := e.b.SnapshotsPage(ctx, "", 1, func(sn *backend.Snapshot) bool { return sn.SourceVolumeID == src })
	if err != nil || len(one) != 1 || one[0].ID != snaps[4].ID || more {
		t.Errorf("snapshots of %s: %v, more %v, %v", src, one, more, err)
	}
	if _, _, err := e.b.SnapshotsPage(ctx, e.vols[0].ID, 1, nil); csierr.Code(err) != codes.Aborted {
		t.Errorf("SnapshotsPage after a volume id: %v", err)
	}

	// Names: one read.
	if v, err := e.b.VolumeNamed(ctx, "v7"); err != nil || v.ID != e.vols[7].ID {
		t.Errorf("VolumeNamed(v7) = %v, %v", v, err)
	}
	if sn, err := e.b.SnapshotNamed(ctx, "s3"); err != nil || sn.SourceVolumeID != e.vols[3].ID {
		t.Errorf("SnapshotNamed(s3) = %v, %v", sn, err)
	}
	if _, err := e.b.VolumeNamed(ctx, "nope"); csierr.Code(err) != codes.NotFound {
		t.Errorf("VolumeNamed(nope): %v", err)
	}
	if _, err := e.b.SnapshotNamed(ctx, "nope"); csierr.Code(err) != codes.NotFound {
		t.Errorf("SnapshotNamed(nope): %v", err)
	}
}

func ids(snaps []*backend.Snapshot) []string {
	out := make([]string, len(snaps))
	for i, sn := range snaps {
		out[i] = sn.ID
	}
	return out
}
