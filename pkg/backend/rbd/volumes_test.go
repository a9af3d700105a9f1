package rbd

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// deleteRunner answers index reads with one volume record, the rm calls
// with rmErrs in turn (then success), and status and snap ls with the
// given watchers and snapshots.
func deleteRunner(b func() *Backend, rmErrs []error, watchers, snaps string) *fakeRunner {
	return &fakeRunner{answers: map[string]func([]string) ([]byte, error){
		"image-meta get": func(args []string) ([]byte, error) {
			id := "rbd/" + b().names.volumeImage(nameHash("v"))
			rec, _ := json.Marshal(volumeRecord{Volume: backend.Volume{ID: id}, Pool: "rbd", Image: b().names.volumeImage(nameHash("v"))})
			return rec, nil
		},
		"rm": func([]string) ([]byte, error) {
			if len(rmErrs) == 0 {
				return nil, nil
			}
			err := rmErrs[0]
			rmErrs = rmErrs[1:]
			return nil, err
		},
		"status":   func([]string) ([]byte, error) { return []byte(`{"watchers":` + watchers + `}`), nil },
		"snap ls":  func([]string) ([]byte, error) { return []byte(snaps), nil },
		"trash mv": func([]string) ([]byte, error) { return nil, nil },
	}}
}

// rbd rm refuses an image that is open or has snapshots and changes
// nothing; DeleteVolume then says why, removes what a failed clone left,
// or sends an image that only clones still need to the trash.
func TestDeleteVolumeDecisions(t *testing.T) {
	hasSnaps := exitErr(39, "rbd: image has snapshots - these must be deleted with 'rbd snap purge' before the image can be removed.\n")
	watched := exitErr(16, "rbd: error: image still has watchers\n")
	temp := (names{"test"}).cloneSnapshot(nameHash("c"))
	tests := []struct {
		name            string
		rmErrs          []error
		watchers, snaps string
		code            codes.Code
		want            string // the subcommands run, in order
	}{
		{"removed", nil, "[]", "[]", codes.OK, "image-meta get,rm,image-meta remove"},
		{"gone already", []error{exitErr(2, "rbd: delete error: (2) No such file or directory\n")}, "[]", "[]", codes.OK,
			"image-meta get,rm,image-meta remove"},
		{"attached somewhere", []error{watched}, `[{"address":"10.0.0.7:0/1"}]`, "[]", codes.FailedPrecondition, "image-meta get,rm,status"},
		{"user snapshots", []error{hasSnaps}, "[]", `[{"name":"test-snap-1","namespace":{"type":"user"}}]`, codes.FailedPrecondition,
			"image-meta get,rm,status,snap ls"},
		{"clones only", []error{hasSnaps}, "[]", `[{"name":"0f1e","namespace":{"type":"trash"}}]`, codes.OK,
			"image-meta get,rm,status,snap ls,trash mv,image-meta remove"},
		{"a failed clone's snapshot", []error{hasSnaps}, "[]", `[{"name":"` + temp + `","namespace":{"type":"user"}}]`, codes.OK,
			"image-meta get,rm,status,snap ls,snap rm,rm,image-meta remove"},
		{"busy otherwise", []error{exitErr(16, "rbd: error: (16) Device or resource busy\n")}, "[]", "[]", codes.FailedPrecondition,
			"image-meta get,rm,status,snap ls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b *Backend
			run := deleteRunner(func() *Backend { return b }, tt.rmErrs, tt.watchers, tt.snaps)
			b = newTestBackend(t, run)
			id := "rbd/" + b.names.volumeImage(nameHash("v"))
			err := b.DeleteVolume(context.Background(), id)
			if csierr.Code(err) != tt.code {
				t.Fatalf("DeleteVolume: %v, want %v", err, tt.code)
			}
			var subs []string
			for _, c := range run.commands() {
				f := strings.Fields(c)[7:] // after rbd -c C --id U --keyring K
				n := 2
				if f[0] == "rm" || f[0] == "status" {
					n = 1
				}
				subs = append(subs, strings.Join(f[:n], " "))
			}
			if got := strings.Join(subs, ","); got != tt.want {
				t.Fatalf("ran %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Ids that are not this cluster's volumes are never touched: no command
// runs for them.
func TestForeignIDsRunNothing(t *testing.T) {
	run := &fakeRunner{}
	b := newTestBackend(t, run)
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
	if cmds := run.commands(); len(cmds) != 0 {
		t.Fatalf("commands ran: %v", cmds)
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
	run := &fakeRunner{}
	b := newTestBackend(t, run)
	ref := imageRef{"rbd", b.names.volumeImage(nameHash("q"))}
	if err := b.applyMutable(context.Background(), b.creds, ref, map[string]string{ParamQoSIOPS: "500", ParamQoSBPS: "0"}); err != nil {
		t.Fatal(err)
	}
	cmds := run.commands()
	if len(cmds) != 2 || !strings.HasSuffix(cmds[0], "config image set "+ref.String()+" rbd_qos_bps_limit 0") ||
		!strings.HasSuffix(cmds[1], "config image set "+ref.String()+" rbd_qos_iops_limit 500") {
		t.Fatalf("commands %v", cmds)
	}
}
