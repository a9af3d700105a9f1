package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

func TestCreateVolumeRootDirInvalid(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		params map[string]string
		block  bool
		want   []string // substrings of the error message
	}{
		{"uid not a number", map[string]string{"uid": "alice"}, false, []string{"uid", "alice"}},
		{"uid empty", map[string]string{"uid": ""}, false, []string{"uid"}},
		{"uid negative", map[string]string{"uid": "-1"}, false, []string{"uid", "-1"}},
		{"uid fraction", map[string]string{"uid": "1000.5"}, false, []string{"uid"}},
		{"uid is chown's no-id", map[string]string{"uid": "4294967295"}, false, []string{"uid", "4294967294"}},
		{"uid beyond 32 bits", map[string]string{"uid": "4294967296"}, false, []string{"uid"}},
		{"gid not a number", map[string]string{"uid": "1000", "gid": "staff"}, false, []string{"gid", "staff"}},
		{"gid negative", map[string]string{"gid": "-5"}, false, []string{"gid"}},
		{"gid beyond 2^32-2", map[string]string{"gid": "4294967295"}, false, []string{"gid"}},
		{"mode not octal", map[string]string{"mode": "0790"}, false, []string{"mode", "0790", "07777"}},
		{"mode symbolic", map[string]string{"mode": "u+rwx"}, false, []string{"mode"}},
		{"mode beyond 07777", map[string]string{"mode": "010000"}, false, []string{"mode", "07777"}},
		{"mode negative", map[string]string{"mode": "-0750"}, false, []string{"mode"}},
		{"block volume", map[string]string{"uid": "1000"}, true, []string{"uid", "block"}},
		{"block volume, default values", map[string]string{"mode": "0755"}, true, []string{"mode", "block"}},
		{"clone", map[string]string{"uid": "1000", "cloneFrom": "src"}, false, []string{"copy", "source"}},
		{"restore", map[string]string{"mode": "0700", "fromSnapshot": "snap"}, false, []string{"copy", "source"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			if tt.block {
				req.VolumeCapabilities = []*csi.VolumeCapability{blockCap(snw)}
			}
			req.Parameters = tt.params
			_, err := s.CreateVolume(ctx, req)
			wantCode(t, err, codes.InvalidArgument)
			for _, m := range tt.want {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if n := fb.callCount("CreateVolume") + fb.callCount("CreateVolumeFrom"); n != 0 {
				t.Errorf("an invalid request reached the backend %d times", n)
			}
		})
	}

	// A content source from the CO is a copy too.
	s, _ := newServer(t, 0)
	src := mustCreate(t, s, mountReq("src"))
	req := mountReq("clone")
	req.Parameters = map[string]string{"uid": "1000"}
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}
	_, err := s.CreateVolume(ctx, req)
	wantCode(t, err, codes.InvalidArgument)
}

func TestCreateVolumeRootDir(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		params map[string]string
		want   *backend.RootDir
	}{
		{"all three", map[string]string{"uid": "1000", "gid": "1000", "mode": "0750"}, &backend.RootDir{UID: 1000, GID: 1000, Mode: 0o750}},
		{"uid only", map[string]string{"uid": "1000"}, &backend.RootDir{UID: 1000, GID: 0, Mode: 0o755}},
		{"mode without a leading zero, setgid", map[string]string{"mode": "2770"}, &backend.RootDir{Mode: 0o2770}},
		{"largest ids", map[string]string{"uid": "4294967294", "gid": "4294967294"}, &backend.RootDir{UID: 1<<32 - 2, GID: 1<<32 - 2, Mode: 0o755}},
		{"mode 0", map[string]string{"mode": "0"}, &backend.RootDir{}},
		{"what mkfs makes", map[string]string{"uid": "0", "gid": "0", "mode": "0755"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			req.Parameters = tt.params
			v := mustCreate(t, s, req)
			got := fb.volume(v.GetVolumeId()).Root
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Fatalf("root %+v, want %+v", got, tt.want)
			}
			vc := v.GetVolumeContext()
			if tt.want != nil {
				for k, val := range tt.want.Parameters() {
					if vc[k] != val {
						t.Errorf("volume context %s=%q, want %q", k, vc[k], val)
					}
				}
			} else if _, ok := vc["uid"]; ok {
				t.Errorf("volume context %v names an owner", vc)
			}
			// A retry is answered with the volume; other values are
			// another volume.
			if again := mustCreate(t, s, req); again.GetVolumeId() != v.GetVolumeId() {
				t.Errorf("retry gave %s, want %s", again.GetVolumeId(), v.GetVolumeId())
			}
			req.Parameters = map[string]string{"uid": "4242"}
			_, err := s.CreateVolume(ctx, req)
			wantCode(t, err, codes.AlreadyExists)
		})
	}

	// GetCapacity takes the parameters of a CreateVolume.
	s, fb := newServer(t, 0)
	fb.capacity = giB
	if _, err := s.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"uid": "1000", "mode": "0700"}}); err != nil {
		t.Errorf("GetCapacity with uid and mode: %v", err)
	}
}

// A directory volume takes them too: the backend makes the directory so.
func TestSharedFilesystemRootDir(t *testing.T) {
	fb := newFakeBackend("n1")
	fb.info.SharedFilesystem = true
	s := New(fb, 0)
	req := mountReq("shared")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnmw, "")}
	req.Parameters = map[string]string{"uid": "1000", "gid": "1000", "mode": "0750"}
	v := mustCreate(t, s, req)
	if r := fb.volume(v.GetVolumeId()).Root; r == nil || *r != (backend.RootDir{UID: 1000, GID: 1000, Mode: 0o750}) {
		t.Fatalf("root %+v", r)
	}
}
