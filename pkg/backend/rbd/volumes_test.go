package rbd

import (
	"context"
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
