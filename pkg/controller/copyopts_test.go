package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// cloneFrom and fromSnapshot name their source by Swarm name or by id and
// become the content source Swarm never sends.
func TestCopyOptions(t *testing.T) {
	for _, paged := range []bool{false, true} {
		t.Run(fmt.Sprintf("paged=%t", paged), func(t *testing.T) { testCopyOptions(t, paged) })
	}
}

// testCopyOptions resolves the options' names with a backend that looks
// names up (paged) or by listing every volume and snapshot.
func testCopyOptions(t *testing.T, paged bool) {
	ctx := context.Background()
	fb := newFakeBackend()
	var be backend.Controller = fb
	if paged {
		be = pagingBackend{fb}
	}
	s := New(be, 0)
	src := mustCreate(t, s, mountReq("db-1"))
	snap, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "before-upgrade", SourceVolumeId: src.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	snapID := snap.GetSnapshot().GetSnapshotId()

	for _, tc := range []struct {
		name, key, ref string
		volume         bool
	}{
		{"db-2", paramCloneFrom, "db-1", true},
		{"db-3", paramCloneFrom, src.GetVolumeId(), true},
		{"db-4", paramFromSnapshot, "before-upgrade", false},
		{"db-5", paramFromSnapshot, snapID, false},
	} {
		req := mountReq(tc.name)
		req.Parameters = map[string]string{tc.key: tc.ref}
		v := mustCreate(t, s, req)
		got := v.GetContentSource()
		if tc.volume && got.GetVolume().GetVolumeId() != src.GetVolumeId() ||
			!tc.volume && got.GetSnapshot().GetSnapshotId() != snapID {
			t.Errorf("%s=%s: content source %v", tc.key, tc.ref, got)
		}
		// A retry is the same volume.
		if again := mustCreate(t, s, req); again.GetVolumeId() != v.GetVolumeId() {
			t.Errorf("%s=%s: a retry made %s, want %s", tc.key, tc.ref, again.GetVolumeId(), v.GetVolumeId())
		}
		if b := fb.vols[v.GetVolumeId()]; b.Parameters[tc.key] != "" {
			t.Errorf("%s reached the backend's parameters: %v", tc.key, b.Parameters)
		}
	}

	before := fb.callCount("CreateVolume")
	for _, tc := range []struct {
		params map[string]string
		source bool
		code   codes.Code
		want   string
	}{
		{map[string]string{paramCloneFrom: "nope"}, false, codes.NotFound, "no volume of the fake backend has that name or id"},
		{map[string]string{paramFromSnapshot: "nope"}, false, codes.NotFound, "no snapshot"},
		{map[string]string{paramCloneFrom: ""}, false, codes.InvalidArgument, "is empty"},
		{map[string]string{paramCloneFrom: "db-1", paramFromSnapshot: "before-upgrade"}, false, codes.InvalidArgument, "exclude each other"},
		{map[string]string{paramCloneFrom: "db-1"}, true, codes.InvalidArgument, "content source"},
	} {
		req := mountReq("bad")
		req.Parameters = tc.params
		if tc.source {
			req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}
		}
		_, err := s.CreateVolume(ctx, req)
		wantCode(t, err, tc.code)
		if err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want it to say %q", tc.params, err, tc.want)
		}
	}
	if n := fb.callCount("CreateVolume"); n != before {
		t.Errorf("bad copy options reached the backend's CreateVolume %d times", n-before)
	}

	if lists := fb.callCount("ListVolumes") + fb.callCount("ListSnapshots"); paged && lists > 0 {
		t.Errorf("names resolved with %d listings of every volume or snapshot", lists)
	}

	// A backend that cannot copy says so, naming the option and itself.
	s2 := New(coreOnly{fb}, 0)
	for key, ref := range map[string]string{paramCloneFrom: "db-1", paramFromSnapshot: "before-upgrade"} {
		req := mountReq("no-copy")
		req.Parameters = map[string]string{key: ref}
		_, err := s2.CreateVolume(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		if err != nil && (!strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "fake backend")) {
			t.Errorf("%s on a backend without copies: %v, want the option and the backend named", key, err)
		}
	}
}
