package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// A backend whose volumes are directories of a shared filesystem: mount
// access in every mode, multi-node writers included; no block, fsType or
// mkfsOptions; sizes recorded but said not to be enforced.
func TestSharedFilesystemBackend(t *testing.T) {
	ctx := context.Background()
	plain := New(newFakeBackend("n1"), 0)
	req := mountReq("shared")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnmw, "")}
	_, err := plain.CreateVolume(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	fb := newFakeBackend("n1")
	fb.info.SharedFilesystem = true
	s := New(fb, 0)
	v := mustCreate(t, s, req)
	if ctxt := v.GetVolumeContext(); ctxt["capacity"] != "not enforced" || ctxt["accessMode"] != mnmw.String() {
		t.Errorf("volume context %v", ctxt)
	}
	fb.info.Quota = true
	if q := New(fb, 0).csiVolume(fb.volume(v.GetVolumeId())); q.GetVolumeContext()["capacity"] != "" {
		t.Errorf("a backend with quotas says: %v", q.GetVolumeContext())
	}
	fb.info.Quota = false
	if _, ok := v.GetVolumeContext()["fsType"]; ok || fb.volume(v.GetVolumeId()).FsType != "" {
		t.Errorf("a directory got a filesystem type: %v", v.GetVolumeContext())
	}
	resp, err := s.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: v.GetVolumeId(), VolumeCapabilities: []*csi.VolumeCapability{mountCap(mnmw, ""), mountCap(mnro, "")}})
	if err != nil || resp.GetConfirmed() == nil {
		t.Errorf("ValidateVolumeCapabilities of multi-node modes: %v %v", resp, err)
	}
	resp, err = s.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: v.GetVolumeId(), VolumeCapabilities: []*csi.VolumeCapability{mountCap(mnmw, "ext4")}})
	if err != nil || resp.GetConfirmed() != nil {
		t.Errorf("ValidateVolumeCapabilities with fs_type ext4: %v %v", resp, err)
	}

	for _, c := range []struct {
		name, want string
		change     func(*csi.CreateVolumeRequest)
	}{
		{"block", "block access is not supported", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(mnmw)}
		}},
		{"fs_type", "fs_type \"xfs\" does not apply", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snw, "xfs")}
		}},
		{"fsType", "do not apply", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"fsType": "ext4"} }},
		{"mkfsOptions", "do not apply", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mkfsOptions": "-m 0"} }},
	} {
		r := mountReq("bad-" + c.name)
		c.change(r)
		_, err := s.CreateVolume(ctx, r)
		wantCode(t, err, codes.InvalidArgument)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
