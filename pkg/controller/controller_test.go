package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

const (
	snw  = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	snro = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	mnro = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	mnsw = csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER
	mnmw = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
)

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func newServer(t *testing.T, maxPerNode int64, nodes ...string) (*Server, *fakeBackend) {
	t.Helper()
	fb := newFakeBackend(nodes...)
	return New(fb, maxPerNode), fb
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := csierr.Code(err); got != want {
		t.Fatalf("got code %v (error %v), want %v", got, err, want)
	}
}

// mountReq is a CreateVolumeRequest as Swarm sends it for
// `docker volume create --type mount --scope single --sharing none NAME`.
func mountReq(name string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "")},
		CapacityRange: &csi.CapacityRange{}}
}

func mustCreate(t *testing.T, s *Server, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	resp, err := s.CreateVolume(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", req.GetName(), err)
	}
	return resp.GetVolume()
}

func mustPublish(t *testing.T, s *Server, volID, nodeID string, c *csi.VolumeCapability, readonly bool) map[string]string {
	t.Helper()
	resp, err := s.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: volID, NodeId: nodeID, VolumeCapability: c, Readonly: readonly})
	if err != nil {
		t.Fatalf("ControllerPublishVolume(%s, %s): %v", volID, nodeID, err)
	}
	return resp.GetPublishContext()
}

func publish(s *Server, volID, nodeID string, c *csi.VolumeCapability, readonly bool) error {
	_, err := s.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: volID, NodeId: nodeID, VolumeCapability: c, Readonly: readonly})
	return err
}

func attachments(t *testing.T, fb *fakeBackend, id string) []backend.Attachment {
	t.Helper()
	v := fb.volume(id)
	if v == nil {
		t.Fatalf("volume %s does not exist in the backend", id)
	}
	out := slices.Clone(v.Attachments)
	slices.SortFunc(out, func(a, b backend.Attachment) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out
}

func TestControllerCapabilities(t *testing.T) {
	s, _ := newServer(t, 0)
	resp, err := s.ControllerGetCapabilities(context.Background(), &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var have []csi.ControllerServiceCapability_RPC_Type
	for _, c := range resp.GetCapabilities() {
		have = append(have, c.GetRpc().GetType())
	}
	// Swarm publishes volumes only through a controller that has
	// PUBLISH_UNPUBLISH_VOLUME (docs/swarm.md, "Identity and Probe").
	for _, want := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	} {
		if !slices.Contains(have, want) {
			t.Errorf("capabilities %v lack %v", have, want)
		}
	}
}

func TestCreateVolumeInvalid(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*csi.CreateVolumeRequest)
		wantMsg []string // substrings of the error message
	}{
		{"no name", func(r *csi.CreateVolumeRequest) { r.Name = "" }, []string{"name"}},
		{"unknown parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"size": "1G"} },
			[]string{`"size"`, "fsType", "mkfsOptions", "pool"}},
		{"bad fsType parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"fsType": "btrfs"} },
			[]string{"btrfs"}},
		{"bad capability fs_type", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snw, "ntfs")}
		}, []string{"ntfs"}},
		{"fsType parameter conflicts with capability", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"fsType": "xfs"}
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snw, "ext4")}
		}, []string{"xfs", "ext4"}},
		{"capabilities disagree on fs_type", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snw, "ext4"), mountCap(snw, "xfs")}
		}, nil},
		{"mkfsOptions shell", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mkfsOptions": "-E x; rm -rf /"} },
			[]string{"mkfsOptions"}},
		{"mkfsOptions substitution", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mkfsOptions": "$(reboot)"} },
			[]string{"mkfsOptions"}},
		{"mkfsOptions caret", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mkfsOptions": "-O ^has_journal"} },
			[]string{"mkfsOptions"}},
		{"mountOptions space", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"mountOptions": "noatime, nodiratime"}
		},
			[]string{"mountOptions", `" nodiratime"`}},
		{"mountOptions empty option", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mountOptions": "noatime,,ro"} },
			[]string{"mountOptions", `""`}},
		{"mountOptions quote", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mountOptions": `context="x"`} },
			[]string{"mountOptions"}},
		{"mountOptions bind", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mountOptions": "noatime,bind"} },
			[]string{"mountOptions", "bind", "operation"}},
		{"mountOptions on a block volume", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"mountOptions": "noatime"}
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(snw)}
		}, []string{"mountOptions", "block"}},
		{"capability mount flag remount", func(r *csi.CreateVolumeRequest) {
			c := mountCap(snw, "ext4")
			c.GetMount().MountFlags = []string{"remount"}
			r.VolumeCapabilities = []*csi.VolumeCapability{c}
		}, []string{"remount", "operation"}},
		{"no capabilities", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, nil},
		{"capability without access type", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw}}}
		}, nil},
		// docker volume create --scope multi --sharing none
		// (docs/swarm.md, "CreateVolume").
		{"swarm multi+none is UNKNOWN, block", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_UNKNOWN)}
		}, []string{"UNKNOWN", "SINGLE_NODE_WRITER", "MULTI_NODE_SINGLE_WRITER"}},
		{"swarm multi+none is UNKNOWN, mount", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_UNKNOWN, "")}
		}, []string{"UNKNOWN"}},
		{"access mode out of range", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_Mode(99), "")}
		}, nil},
		{"multi writer mount", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnmw, "")}
		}, []string{"MULTI_NODE_MULTI_WRITER", "block"}},
		{"multi writer mount beside block", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(mnmw), mountCap(mnmw, "")}
		}, nil},
		{"block and mount mixed", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(snw), mountCap(snw, "")}
		}, []string{"block", "mount"}},
		{"mount flag with a space", func(r *csi.CreateVolumeRequest) {
			c := mountCap(snw, "")
			c.GetMount().MountFlags = []string{"ro,remount /"}
			r.VolumeCapabilities = []*csi.VolumeCapability{c}
		}, nil},
		{"negative required", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: -1} }, nil},
		{"negative limit", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{LimitBytes: -1} }, nil},
		{"required above limit", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 200 * miB, LimitBytes: 100 * miB}
		}, []string{"limit_bytes"}},
		{"unknown mutable parameter", func(r *csi.CreateVolumeRequest) { r.MutableParameters = map[string]string{"speed": "x"} },
			[]string{`"speed"`, "iops"}},
		{"empty content source", func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = &csi.VolumeContentSource{} }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			tt.mod(req)
			_, err := s.CreateVolume(context.Background(), req)
			wantCode(t, err, codes.InvalidArgument)
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if n := fb.callCount("CreateVolume"); n != 0 {
				t.Errorf("an invalid request reached the backend %d times", n)
			}
		})
	}
}

func TestCreateVolume(t *testing.T) {
	tests := []struct {
		name      string
		mod       func(*csi.CreateVolumeRequest)
		wantSize  int64
		wantFs    string
		wantBlock bool
		wantMode  string
		check     func(t *testing.T, v *backend.Volume)
	}{
		{name: "swarm default range {0,0}", mod: func(*csi.CreateVolumeRequest) {},
			wantSize: 1 * giB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "no range at all", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange = nil },
			wantSize: 1 * giB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "rounded up to 1 MiB", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 100*miB + 1 },
			wantSize: 101 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "exact MiB kept", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 100 * miB },
			wantSize: 100 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "tiny request gets the minimum size", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 1 },
			wantSize: 16 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "limit below the default size", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 100 * miB },
			wantSize: 100 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "limit not a multiple of the granularity", mod: func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 100*miB + 5 },
			wantSize: 100 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "required equals limit", mod: func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 20 * miB, LimitBytes: 20 * miB}
		}, wantSize: 20 * miB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "xfs parameter", mod: func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"fsType": "xfs"} },
			wantSize: 1 * giB, wantFs: "xfs", wantMode: "SINGLE_NODE_WRITER"},
		{name: "xfs minimum 300 MiB applied", mod: func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"fsType": "xfs"}
			r.CapacityRange.RequiredBytes = 100 * miB
		}, wantSize: 300 * miB, wantFs: "xfs", wantMode: "SINGLE_NODE_WRITER"},
		{name: "xfs from the capability", mod: func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnsw, "xfs")}
		}, wantSize: 1 * giB, wantFs: "xfs", wantMode: "MULTI_NODE_SINGLE_WRITER"},
		{name: "fsType parameter and capability agree", mod: func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"fsType": "ext4"}
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snw, "ext4")}
		}, wantSize: 1 * giB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER"},
		{name: "block multi writer", mod: func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(mnmw)}
		}, wantSize: 1 * giB, wantFs: "", wantBlock: true, wantMode: "MULTI_NODE_MULTI_WRITER"},
		{name: "block ignores fsType parameter", mod: func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"fsType": "xfs"}
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(snw)}
			r.CapacityRange.RequiredBytes = 20 * miB
		}, wantSize: 20 * miB, wantFs: "", wantBlock: true, wantMode: "SINGLE_NODE_WRITER"},
		{name: "reader only", mod: func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnro, "")}
		}, wantSize: 1 * giB, wantFs: "ext4", wantMode: "MULTI_NODE_READER_ONLY"},
		{name: "parameters split", mod: func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"fsType": "ext4", "mkfsOptions": "-E lazy_itable_init=0 -m 1", "mountOptions": "noatime,commit=30", "pool": "fast"}
			r.MutableParameters = map[string]string{"iops": "100"}
		}, wantSize: 1 * giB, wantFs: "ext4", wantMode: "SINGLE_NODE_WRITER", check: func(t *testing.T, v *backend.Volume) {
			if v.MkfsOptions != "-E lazy_itable_init=0 -m 1" {
				t.Errorf("mkfsOptions = %q", v.MkfsOptions)
			}
			if v.MountOptions != "noatime,commit=30" {
				t.Errorf("mountOptions = %q", v.MountOptions)
			}
			if !maps.Equal(v.Parameters, map[string]string{"pool": "fast"}) {
				t.Errorf("backend parameters = %v, want only pool=fast", v.Parameters)
			}
			if !maps.Equal(v.MutableParameters, map[string]string{"iops": "100"}) {
				t.Errorf("mutable parameters = %v", v.MutableParameters)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			tt.mod(req)
			vol := mustCreate(t, s, req)
			v := fb.volume(vol.GetVolumeId())
			if v == nil {
				t.Fatalf("response names %q, which the backend does not have", vol.GetVolumeId())
			}
			if vol.GetCapacityBytes() != tt.wantSize || v.CapacityBytes != tt.wantSize {
				t.Errorf("size: response %d, backend %d, want %d", vol.GetCapacityBytes(), v.CapacityBytes, tt.wantSize)
			}
			if v.FsType != tt.wantFs || v.Block != tt.wantBlock || v.AccessMode != tt.wantMode || v.Name != "v" {
				t.Errorf("backend got %+v, want fsType %q block %t mode %s", v.VolumeSpec, tt.wantFs, tt.wantBlock, tt.wantMode)
			}
			wantCtx := map[string]string{"accessMode": tt.wantMode, "accessType": "mount", "fsType": tt.wantFs}
			if tt.wantBlock {
				wantCtx = map[string]string{"accessMode": tt.wantMode, "accessType": "block"}
			}
			if !maps.Equal(vol.GetVolumeContext(), wantCtx) {
				t.Errorf("volume context %v, want %v", vol.GetVolumeContext(), wantCtx)
			}
			if topo := vol.GetAccessibleTopology(); len(topo) != 1 || topo[0].GetSegments()[fakeTopologyKey] != "a" {
				t.Errorf("accessible topology %v, want the backend's", topo)
			}
			if tt.check != nil {
				tt.check(t, v)
			}
		})
	}
}

func TestCreateVolumeOutOfRange(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		r      *csi.CapacityRange
	}{
		{"rounding passes the limit", nil, &csi.CapacityRange{RequiredBytes: 10*miB + 1, LimitBytes: 10*miB + 100}},
		{"limit below the minimum size", nil, &csi.CapacityRange{LimitBytes: 1 * miB}},
		{"required fits but the minimum does not", nil, &csi.CapacityRange{RequiredBytes: 1 * miB, LimitBytes: 2 * miB}},
		{"xfs minimum above the limit", map[string]string{"fsType": "xfs"}, &csi.CapacityRange{LimitBytes: 200 * miB}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			req.Parameters, req.CapacityRange = tt.params, tt.r
			_, err := s.CreateVolume(context.Background(), req)
			wantCode(t, err, codes.OutOfRange)
			if fb.callCount("CreateVolume") != 0 {
				t.Error("a volume that cannot fit reached the backend")
			}
		})
	}
}

func TestCreateVolumeIdempotent(t *testing.T) {
	s, fb := newServer(t, 0)
	req := mountReq("db")
	req.Parameters = map[string]string{"fsType": "xfs", "pool": "fast"}
	first := mustCreate(t, s, req)
	second := mustCreate(t, s, req)
	if first.GetVolumeId() != second.GetVolumeId() || first.GetCapacityBytes() != second.GetCapacityBytes() {
		t.Fatalf("retry returned %v, first call %v", second, first)
	}
	vols, _ := fb.ListVolumes(context.Background())
	if len(vols) != 1 {
		t.Fatalf("backend has %d volumes after a retry, want 1", len(vols))
	}
	// A range the existing volume fits is a retry too.
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: 512 * miB, LimitBytes: 2 * giB}
	if third := mustCreate(t, s, req); third.GetVolumeId() != first.GetVolumeId() {
		t.Fatalf("compatible range gave another volume %s", third.GetVolumeId())
	}
}

func TestCreateVolumeSameNameOtherArgs(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*csi.CreateVolumeRequest)
	}{
		{"larger size", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 2 * giB }},
		{"limit below the size", func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 512 * miB }},
		{"other fsType", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"fsType": "xfs"} }},
		{"other access mode", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnro, "")}
		}},
		{"block instead of mount", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(snw)}
		}},
		{"other mkfsOptions", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mkfsOptions": "-m 0"} }},
		{"other mountOptions", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mountOptions": "noatime"} }},
		{"other backend parameters", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"pool": "slow"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			first := mustCreate(t, s, mountReq("db"))
			req := mountReq("db")
			tt.mod(req)
			_, err := s.CreateVolume(context.Background(), req)
			wantCode(t, err, codes.AlreadyExists)
			if !strings.Contains(err.Error(), `"db"`) {
				t.Errorf("error %q does not name the volume", err)
			}
			// The existing volume is left as it was.
			v := fb.volume(first.GetVolumeId())
			if v.CapacityBytes != 1*giB || v.FsType != "ext4" || v.Block || v.AccessMode != "SINGLE_NODE_WRITER" {
				t.Errorf("existing volume changed: %+v", v)
			}
		})
	}
}

func TestCreateVolumeContentSource(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*Server, *fakeBackend, *csi.Volume, string) {
		s, fb := newServer(t, 0)
		req := mountReq("src")
		req.Parameters = map[string]string{"fsType": "xfs"}
		req.CapacityRange.RequiredBytes = 400 * miB
		src := mustCreate(t, s, req)
		snap, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.GetVolumeId()})
		if err != nil {
			t.Fatal(err)
		}
		return s, fb, src, snap.GetSnapshot().GetSnapshotId()
	}
	fromVolume := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	}
	fromSnapshot := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}

	t.Run("unknown sources", func(t *testing.T) {
		s, fb, _, _ := setup(t)
		for _, src := range []*csi.VolumeContentSource{fromVolume("vol-nope"), fromSnapshot("snap-nope")} {
			req := mountReq("copy")
			req.VolumeContentSource = src
			_, err := s.CreateVolume(ctx, req)
			wantCode(t, err, codes.NotFound)
		}
		if n := fb.callCount("CreateVolume"); n != 1 {
			t.Errorf("backend CreateVolume called %d times, want 1 (the source only)", n)
		}
	})

	for _, tc := range []struct {
		name string
		src  func(volID, snapID string) *csi.VolumeContentSource
	}{
		{"clone", func(v, _ string) *csi.VolumeContentSource { return fromVolume(v) }},
		{"from snapshot", func(_, sn string) *csi.VolumeContentSource { return fromSnapshot(sn) }},
	} {
		t.Run(tc.name+" inherits fsType and size", func(t *testing.T) {
			s, fb, src, snapID := setup(t)
			req := mountReq("copy")
			req.CapacityRange.RequiredBytes = 20 * miB // smaller than the source
			req.VolumeContentSource = tc.src(src.GetVolumeId(), snapID)
			vol := mustCreate(t, s, req)
			v := fb.volume(vol.GetVolumeId())
			if v.FsType != "xfs" {
				t.Errorf("fsType %q, want the source's xfs", v.FsType)
			}
			if v.CapacityBytes != 400*miB {
				t.Errorf("size %d, want at least the source's %d", v.CapacityBytes, 400*miB)
			}
			want := backend.Source{VolumeID: src.GetVolumeId()}
			if tc.name != "clone" {
				want = backend.Source{SnapshotID: snapID}
			}
			if v.Source == nil || *v.Source != want {
				t.Errorf("backend source %v, want %v", v.Source, want)
			}
			if got := vol.GetContentSource(); got.GetVolume().GetVolumeId() != want.VolumeID || got.GetSnapshot().GetSnapshotId() != want.SnapshotID {
				t.Errorf("response content source %v, want %v", got, want)
			}
			// A retry is idempotent; the same name without a source is not.
			if again := mustCreate(t, s, req); again.GetVolumeId() != vol.GetVolumeId() {
				t.Errorf("retry gave %s, want %s", again.GetVolumeId(), vol.GetVolumeId())
			}
			plain := mountReq("copy")
			plain.Parameters = map[string]string{"fsType": "xfs"}
			_, err := s.CreateVolume(ctx, plain)
			wantCode(t, err, codes.AlreadyExists)
		})

		t.Run(tc.name+" with another fsType", func(t *testing.T) {
			s, _, src, snapID := setup(t)
			for _, req := range []*csi.CreateVolumeRequest{
				{Name: "copy", Parameters: map[string]string{"fsType": "ext4"},
					VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "")}},
				{Name: "copy", VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "ext4")}},
			} {
				req.VolumeContentSource = tc.src(src.GetVolumeId(), snapID)
				_, err := s.CreateVolume(ctx, req)
				wantCode(t, err, codes.InvalidArgument)
			}
		})

		t.Run(tc.name+" limit below the source", func(t *testing.T) {
			s, _, src, snapID := setup(t)
			req := mountReq("copy")
			req.CapacityRange.LimitBytes = 350 * miB
			req.VolumeContentSource = tc.src(src.GetVolumeId(), snapID)
			_, err := s.CreateVolume(ctx, req)
			wantCode(t, err, codes.OutOfRange)
		})
	}
}

func TestCreateVolumeTopology(t *testing.T) {
	topo := func(zone string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{fakeTopologyKey: zone}}
	}
	tests := []struct {
		name string
		req  *csi.TopologyRequirement
		want codes.Code
	}{
		{"none", nil, codes.OK},
		{"requisite matches", &csi.TopologyRequirement{Requisite: []*csi.Topology{topo("a")}}, codes.OK},
		{"one requisite of several matches", &csi.TopologyRequirement{Requisite: []*csi.Topology{topo("b"), topo("a")}}, codes.OK},
		{"requisite mismatch", &csi.TopologyRequirement{Requisite: []*csi.Topology{topo("b")}}, codes.ResourceExhausted},
		{"requisite with an unknown key", &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"rack": "1"}}}},
			codes.ResourceExhausted},
		{"preferred only is a preference", &csi.TopologyRequirement{Preferred: []*csi.Topology{topo("b")}}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			req := mountReq("v")
			req.AccessibilityRequirements = tt.req
			_, err := s.CreateVolume(context.Background(), req)
			wantCode(t, err, tt.want)
			if tt.want != codes.OK && fb.callCount("CreateVolume") != 0 {
				t.Error("refused request reached the backend")
			}
		})
	}
}

func TestDeleteVolume(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a")
	_, err := s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument)
	if _, err := s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol-unknown"}); err != nil {
		t.Fatalf("deleting an unknown volume: %v, want success", err)
	}

	vol := mustCreate(t, s, mountReq("v"))
	mustPublish(t, s, vol.GetVolumeId(), "node-a", mountCap(snw, ""), false)
	// docker volume rm right after docker service rm (docs/swarm.md,
	// "Removing volumes").
	_, err = s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	wantCode(t, err, codes.FailedPrecondition)
	if fb.volume(vol.GetVolumeId()) == nil {
		t.Fatal("published volume was deleted")
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
			t.Fatalf("delete #%d: %v", i+1, err)
		}
	}
	if fb.volume(vol.GetVolumeId()) != nil {
		t.Fatal("volume still exists after DeleteVolume")
	}
}

func TestControllerPublishInvalid(t *testing.T) {
	s, fb := newServer(t, 0, "node-a")
	vol := mustCreate(t, s, mountReq("v"))
	id := vol.GetVolumeId()
	tests := []struct {
		name string
		req  *csi.ControllerPublishVolumeRequest
		want codes.Code
	}{
		{"no volume id", &csi.ControllerPublishVolumeRequest{NodeId: "node-a", VolumeCapability: mountCap(snw, "")}, codes.InvalidArgument},
		{"no node id", &csi.ControllerPublishVolumeRequest{VolumeId: id, VolumeCapability: mountCap(snw, "")}, codes.InvalidArgument},
		{"no capability", &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a"}, codes.InvalidArgument},
		{"unknown access mode", &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a",
			VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_UNKNOWN, "")}, codes.InvalidArgument},
		{"unknown volume", &csi.ControllerPublishVolumeRequest{VolumeId: "vol-nope", NodeId: "node-a", VolumeCapability: mountCap(snw, "")}, codes.NotFound},
		{"unknown node", &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-x", VolumeCapability: mountCap(snw, "")}, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.ControllerPublishVolume(context.Background(), tt.req)
			wantCode(t, err, tt.want)
		})
	}
	if n := fb.callCount("Publish"); n != 0 {
		t.Errorf("refused publishes reached the backend %d times", n)
	}
}

// TestControllerPublishSingleWriterDrain is the drain of docs/swarm.md ("A
// drain publishes before it unpublishes"): Swarm
// publishes to the new node before the old one has unpublished, and only
// FailedPrecondition keeps the filesystem from being mounted twice.
func TestControllerPublishSingleWriterDrain(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a", "node-b")
	id := mustCreate(t, s, mountReq("v")).GetVolumeId()
	c := mountCap(snw, "")
	mustPublish(t, s, id, "node-a", c, false)

	err := publish(s, id, "node-b", c, false)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "node-a") {
		t.Errorf("error %q does not name the node holding the volume", err)
	}
	// Whatever mode the request claims, the volume's own mode rules.
	wantCode(t, publish(s, id, "node-b", mountCap(mnmw, ""), false), codes.FailedPrecondition)
	wantCode(t, publish(s, id, "node-b", c, true), codes.FailedPrecondition)
	if got := attachments(t, fb, id); !slices.Equal(got, []backend.Attachment{{NodeID: "node-a"}}) {
		t.Fatalf("attachments %v after refused publishes", got)
	}

	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, s, id, "node-b", c, false) // Swarm's retry succeeds
	if got := attachments(t, fb, id); !slices.Equal(got, []backend.Attachment{{NodeID: "node-b"}}) {
		t.Fatalf("attachments %v, want node-b only", got)
	}
}

func TestControllerPublishSingleNodeReaderOnly(t *testing.T) {
	s, fb := newServer(t, 0, "node-a", "node-b")
	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(snro, "")}
	id := mustCreate(t, s, req).GetVolumeId()
	mustPublish(t, s, id, "node-a", mountCap(snro, ""), false)
	wantCode(t, publish(s, id, "node-b", mountCap(snro, ""), false), codes.FailedPrecondition)
	if got := attachments(t, fb, id); !slices.Equal(got, []backend.Attachment{{NodeID: "node-a", ReadOnly: true}}) {
		t.Fatalf("attachments %v, want node-a read-only", got)
	}
}

func TestControllerPublishMultiNodeSingleWriter(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a", "node-b", "node-c")
	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnsw, "")}
	id := mustCreate(t, s, req).GetVolumeId()
	c := mountCap(mnsw, "")

	mustPublish(t, s, id, "node-a", c, false)
	wantCode(t, publish(s, id, "node-b", c, false), codes.FailedPrecondition)
	mustPublish(t, s, id, "node-b", c, true)
	mustPublish(t, s, id, "node-c", c, true)
	want := []backend.Attachment{{NodeID: "node-a"}, {NodeID: "node-b", ReadOnly: true}, {NodeID: "node-c", ReadOnly: true}}
	if got := attachments(t, fb, id); !slices.Equal(got, want) {
		t.Fatalf("attachments %v, want %v", got, want)
	}
	// Readers do not block a writer once the writer has gone.
	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-c"}); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, s, id, "node-c", c, false)
}

func TestControllerPublishMultiNodeReaderOnly(t *testing.T) {
	s, fb := newServer(t, 0, "n1", "n2", "n3", "n4")
	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnro, "")}
	id := mustCreate(t, s, req).GetVolumeId()
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		mustPublish(t, s, id, n, mountCap(mnro, ""), false) // Swarm never sets readonly
	}
	got := attachments(t, fb, id)
	if len(got) != 4 {
		t.Fatalf("attachments %v, want 4", got)
	}
	for _, a := range got {
		if !a.ReadOnly {
			t.Errorf("attachment %v of a reader-only volume is writable", a)
		}
	}
}

func TestControllerPublishMultiWriterBlock(t *testing.T) {
	s, fb := newServer(t, 0, "node-a", "node-b")
	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap(mnmw)}
	id := mustCreate(t, s, req).GetVolumeId()
	// Swarm forces mount access in ControllerPublish, even for a block
	// volume and for MULTI_NODE_MULTI_WRITER (docs/swarm.md,
	// "ControllerPublishVolume and ControllerUnpublishVolume").
	mustPublish(t, s, id, "node-a", mountCap(mnmw, ""), false)
	mustPublish(t, s, id, "node-b", blockCap(mnmw), false)
	if got := attachments(t, fb, id); len(got) != 2 || got[0].ReadOnly || got[1].ReadOnly {
		t.Fatalf("attachments %v, want two writers", got)
	}
}

func TestControllerPublishIdempotent(t *testing.T) {
	s, fb := newServer(t, 0, "node-a")
	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnsw, "")}
	id := mustCreate(t, s, req).GetVolumeId()
	c := mountCap(mnsw, "")
	first := mustPublish(t, s, id, "node-a", c, false)
	second := mustPublish(t, s, id, "node-a", c, false)
	if len(first) == 0 || !maps.Equal(first, second) {
		t.Fatalf("publish contexts %v and %v, want the same", first, second)
	}
	if got := attachments(t, fb, id); len(got) != 1 {
		t.Fatalf("attachments %v after a repeated publish", got)
	}
	err := publish(s, id, "node-a", c, true)
	wantCode(t, err, codes.AlreadyExists)
	if got := attachments(t, fb, id); !slices.Equal(got, []backend.Attachment{{NodeID: "node-a"}}) {
		t.Fatalf("attachments %v after a conflicting publish", got)
	}
}

func TestControllerPublishNodeLimit(t *testing.T) {
	s, fb := newServer(t, 2, "node-a", "node-b")
	var ids []string
	for i := range 3 {
		ids = append(ids, mustCreate(t, s, mountReq(fmt.Sprint("v", i))).GetVolumeId())
	}
	c := mountCap(snw, "")
	mustPublish(t, s, ids[0], "node-a", c, false)
	mustPublish(t, s, ids[1], "node-a", c, false)
	err := publish(s, ids[2], "node-a", c, false)
	wantCode(t, err, codes.ResourceExhausted)
	if got := attachments(t, fb, ids[2]); len(got) != 0 {
		t.Fatalf("attachments %v of a refused volume", got)
	}
	// The limit is per node, and a repeated publish takes no new slot.
	mustPublish(t, s, ids[2], "node-b", c, false)
	mustPublish(t, s, ids[0], "node-a", c, false)
}

// Concurrent publishes of different volumes to one node keep to the
// node's limit: exactly that many succeed, the rest are ResourceExhausted,
// and none is Aborted because of another.
func TestControllerPublishNodeLimitConcurrent(t *testing.T) {
	const limit, tries = 3, 16
	s, fb := newServer(t, limit, "node-a")
	ids := make([]string, tries)
	for i := range ids {
		ids[i] = mustCreate(t, s, mountReq(fmt.Sprint("v", i))).GetVolumeId()
	}
	// An attach takes a while, so every publish that does not wait for
	// the node would count its volumes before any other had attached.
	fb.publishFn = func(context.Context, string, backend.Attachment) error {
		time.Sleep(2 * time.Millisecond)
		return nil
	}
	start := make(chan struct{})
	errs := make([]error, tries)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = publish(s, id, "node-a", mountCap(snw, ""), false)
		}()
	}
	close(start)
	wg.Wait()
	published := 0
	for i, err := range errs {
		switch csierr.Code(err) {
		case codes.OK:
			published++
		case codes.ResourceExhausted:
		default:
			t.Errorf("publish of %s: %v, want success or ResourceExhausted", ids[i], err)
		}
	}
	attached := 0
	for _, id := range ids {
		attached += len(attachments(t, fb, id))
	}
	if published != limit || attached != limit {
		t.Fatalf("%d publishes succeeded and %d volumes are attached to a node that takes %d", published, attached, limit)
	}
}

// A publish waits for another volume's publish to the same node (until its
// context ends), and not for one to another node.
func TestControllerPublishNodeLock(t *testing.T) {
	s, fb := newServer(t, 1, "node-a", "node-b")
	slow := mustCreate(t, s, mountReq("slow")).GetVolumeId()
	other := mustCreate(t, s, mountReq("other")).GetVolumeId()
	third := mustCreate(t, s, mountReq("third")).GetVolumeId()
	blk, slowDone := publishBlocked(t, s, fb, slow, "node-a", mountCap(snw, ""))

	mustPublish(t, s, other, "node-b", mountCap(snw, ""), false)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := s.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
		VolumeId: third, NodeId: "node-a", VolumeCapability: mountCap(snw, "")})
	wantCode(t, err, codes.DeadlineExceeded)

	waiting := make(chan error, 1)
	go func() { waiting <- publish(s, third, "node-a", mountCap(snw, ""), false) }()
	select {
	case err := <-waiting:
		t.Fatalf("a publish to a node busy with another volume's publish returned at once: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	blk.unblock()
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	// Its turn comes after the slow one attached, which filled the node.
	wantCode(t, <-waiting, codes.ResourceExhausted)
}

// countingBackend counts a node's attachments itself, as a backend whose
// listing is costly does.
type countingBackend struct {
	*fakeBackend
	counted int
}

func (c *countingBackend) NodeAttachments(_ context.Context, nodeID string) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counted++
	n := int64(0)
	for _, v := range c.vols {
		if _, ok := v.AttachedTo(nodeID); ok {
			n++
		}
	}
	return n, nil
}

// A backend that counts attachments is asked instead of listing every
// volume; the limit holds alike.
func TestControllerPublishNodeLimitCounted(t *testing.T) {
	cb := &countingBackend{fakeBackend: newFakeBackend("node-a", "node-b")}
	s := New(cb, 2)
	var ids []string
	for i := range 3 {
		ids = append(ids, mustCreate(t, s, mountReq(fmt.Sprint("v", i))).GetVolumeId())
	}
	c := mountCap(snw, "")
	mustPublish(t, s, ids[0], "node-a", c, false)
	mustPublish(t, s, ids[1], "node-a", c, false)
	wantCode(t, publish(s, ids[2], "node-a", c, false), codes.ResourceExhausted)
	mustPublish(t, s, ids[2], "node-b", c, false)
	mustPublish(t, s, ids[0], "node-a", c, false) // published already: not counted
	if n := cb.callCount("ListVolumes"); n != 0 || cb.counted != 4 {
		t.Errorf("%d listings and %d counts for 4 new attachments, want none and 4", n, cb.counted)
	}
}

// publishReader looks at a volume to publish with VolumeForPublish, as a
// backend that remembers what it needs to attach does, and checks that
// Publish gets what it answered.
type publishReader struct {
	*fakeBackend
	handed *backend.Volume // VolumeForPublish's last answer
}

func (p *publishReader) Volume(ctx context.Context, id string) (*backend.Volume, error) {
	p.count("Volume")
	return p.fakeBackend.Volume(ctx, id)
}

func (p *publishReader) VolumeForPublish(ctx context.Context, id string) (*backend.Volume, error) {
	p.count("VolumeForPublish")
	v, err := p.fakeBackend.Volume(ctx, id)
	p.mu.Lock()
	p.handed = v
	p.mu.Unlock()
	return v, err
}

func (p *publishReader) Publish(ctx context.Context, v *backend.Volume, a backend.Attachment) (map[string]string, error) {
	p.mu.Lock()
	handed := p.handed
	p.mu.Unlock()
	if v != handed {
		return nil, fmt.Errorf("publishing %+v, not what VolumeForPublish answered", v)
	}
	return p.fakeBackend.Publish(ctx, v, a)
}

// Only ControllerPublishVolume looks at a volume with VolumeForPublish, and
// hands Publish what it answered; every other call reads with Volume.
func TestControllerPublishReader(t *testing.T) {
	pr := &publishReader{fakeBackend: newFakeBackend("node-a")}
	s := New(pr, 0)
	ctx := context.Background()
	id := mustCreate(t, s, mountReq("v")).GetVolumeId()
	for _, call := range []func() error{
		func() error {
			_, err := s.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
			return err
		},
		func() error {
			_, err := s.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
				VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "")}})
			return err
		},
		func() error {
			_, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * giB}})
			return err
		},
		func() error {
			_, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := pr.callCount("Volume"), pr.callCount("VolumeForPublish"); n != 4 || m != 0 {
		t.Errorf("4 calls besides publishing: %d looks with Volume and %d with VolumeForPublish, want 4 and 0", n, m)
	}
	mustPublish(t, s, id, "node-a", mountCap(snw, ""), false)
	if n, m := pr.callCount("Volume"), pr.callCount("VolumeForPublish"); n != 4 || m != 1 {
		t.Errorf("the publish: %d more looks with Volume and %d with VolumeForPublish, want 0 and 1", n-4, m)
	}
}

// At the storage's own limit nothing is counted: the storage refuses the
// attachment beyond it.
func TestControllerPublishStorageLimit(t *testing.T) {
	s, fb := newServer(t, 0, "node-a")
	fb.info.MaxVolumesPerNode = 1
	s = New(fb, 1)
	fb.publishFn = func(_ context.Context, id string, a backend.Attachment) error {
		fb.mu.Lock()
		defer fb.mu.Unlock()
		for _, v := range fb.vols {
			if _, ok := v.AttachedTo(a.NodeID); ok && v.ID != id {
				return fmt.Errorf("%w: the storage takes 1 volume per node", csierr.ErrResourceExhausted)
			}
		}
		return nil
	}
	c := mountCap(snw, "")
	a := mustCreate(t, s, mountReq("a")).GetVolumeId()
	b := mustCreate(t, s, mountReq("b")).GetVolumeId()
	mustPublish(t, s, a, "node-a", c, false)
	wantCode(t, publish(s, b, "node-a", c, false), codes.ResourceExhausted)
	if n := fb.callCount("ListVolumes"); n != 0 {
		t.Errorf("%d listings, want none", n)
	}
}

// At the storage's own limit, where nothing is counted, publishes of
// different volumes to one node do not wait for each other.
func TestControllerPublishStorageLimitNoNodeLock(t *testing.T) {
	s, fb := newServer(t, 0, "node-a")
	fb.info.MaxVolumesPerNode = 16
	s = New(fb, 16)
	slow := mustCreate(t, s, mountReq("slow")).GetVolumeId()
	other := mustCreate(t, s, mountReq("other")).GetVolumeId()
	blk := newBlocker(t)
	fb.publishFn = func(ctx context.Context, id string, _ backend.Attachment) error {
		if id == slow {
			return blk.wait(ctx)
		}
		return nil
	}
	slowDone := make(chan error, 1)
	go func() { slowDone <- publish(s, slow, "node-a", mountCap(snw, ""), false) }()
	<-blk.entered
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := s.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
		VolumeId: other, NodeId: "node-a", VolumeCapability: mountCap(snw, "")})
	if err != nil {
		t.Errorf("publish beside another volume's publish to the node: %v, want success at once", err)
	}
	blk.unblock()
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
}

func TestControllerUnpublish(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a", "node-b", "node-c")
	_, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{NodeId: "node-a"})
	wantCode(t, err, codes.InvalidArgument)
	for _, node := range []string{"node-a", ""} {
		if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "vol-gone", NodeId: node}); err != nil {
			t.Errorf("unpublish of an unknown volume from %q: %v, want success", node, err)
		}
	}

	req := mountReq("v")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnro, "")}
	id := mustCreate(t, s, req).GetVolumeId()
	other := mustCreate(t, s, mountReq("other")).GetVolumeId()
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		mustPublish(t, s, id, n, mountCap(mnro, ""), false)
	}
	mustPublish(t, s, other, "node-a", mountCap(snw, ""), false)

	// Unpublish from one node, twice; from a node that never had it.
	for range 2 {
		if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-b"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-z"}); err != nil {
		t.Fatal(err)
	}
	if got := attachments(t, fb, id); len(got) != 2 || got[0].NodeID != "node-a" || got[1].NodeID != "node-c" {
		t.Fatalf("attachments %v, want node-a and node-c", got)
	}
	// An empty node id unpublishes from every node, and no other volume.
	if _, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if got := attachments(t, fb, id); len(got) != 0 {
		t.Fatalf("attachments %v after unpublishing from all nodes", got)
	}
	if got := attachments(t, fb, other); len(got) != 1 {
		t.Fatalf("the other volume lost its attachment: %v", got)
	}
}

func listAllVolumes(t *testing.T, s *Server, max int32) (ids []string, pages int) {
	t.Helper()
	token := ""
	for {
		resp, err := s.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: max, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if max > 0 && len(resp.GetEntries()) > int(max) {
			t.Fatalf("page of %d entries, max_entries %d", len(resp.GetEntries()), max)
		}
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			return ids, pages
		}
		if pages > 100 {
			t.Fatal("pagination does not end")
		}
	}
}

func TestListVolumes(t *testing.T) {
	for _, paged := range []bool{false, true} {
		t.Run(fmt.Sprintf("paged=%t", paged), func(t *testing.T) { testListVolumes(t, paged) })
	}
}

// testListVolumes lists the volumes of a backend that reads pages itself
// (paged) or of one that lists them all.
func testListVolumes(t *testing.T, paged bool) {
	fb := newFakeBackend("node-a")
	var be backend.Controller = fb
	if paged {
		be = pagingBackend{fb}
	}
	s := New(be, 0)
	var want []string
	for i := range 5 {
		want = append(want, mustCreate(t, s, mountReq(fmt.Sprint("v", i))).GetVolumeId())
	}
	slices.Sort(want)
	for _, tc := range []struct {
		max       int32
		wantPages int
	}{{0, 1}, {1, 5}, {2, 3}, {4, 2}, {5, 1}, {100, 1}} {
		got, pages := listAllVolumes(t, s, tc.max)
		if !slices.Equal(got, want) || pages != tc.wantPages {
			t.Errorf("max_entries %d: got %v in %d pages, want %v in %d", tc.max, got, pages, want, tc.wantPages)
		}
	}

	mustPublish(t, s, want[1], "node-a", mountCap(snw, ""), false)
	resp, err := s.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if nodes := resp.GetEntries()[1].GetStatus().GetPublishedNodeIds(); !slices.Equal(nodes, []string{"node-a"}) {
		t.Errorf("published nodes %v, want node-a", nodes)
	}
	if nodes := resp.GetEntries()[0].GetStatus().GetPublishedNodeIds(); len(nodes) != 0 {
		t.Errorf("published nodes of an unpublished volume: %v", nodes)
	}

	// Deleting the last entry of a page does not break the next page.
	if err := fb.Unpublish(context.Background(), want[1], "node-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: want[1]}); err != nil {
		t.Fatal(err)
	}
	next, err := s.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: resp.GetNextToken()})
	if err != nil {
		t.Fatalf("next page after its predecessor's last entry was deleted: %v", err)
	}
	var ids []string
	for _, e := range next.GetEntries() {
		ids = append(ids, e.GetVolume().GetVolumeId())
	}
	if !slices.Equal(ids, want[2:4]) {
		t.Fatalf("next page %v, want %v", ids, want[2:4])
	}
	if n := fb.callCount("ListVolumes"); paged && n != 0 {
		t.Errorf("%d listings of every volume, want none", n)
	}
}

func TestListVolumesInvalid(t *testing.T) {
	s, _ := newServer(t, 0)
	mustCreate(t, s, mountReq("v"))
	tests := []struct {
		name string
		req  *csi.ListVolumesRequest
		want codes.Code
	}{
		{"token not ours", &csi.ListVolumesRequest{StartingToken: "garbage"}, codes.Aborted},
		{"token without an id", &csi.ListVolumesRequest{StartingToken: "after:"}, codes.Aborted},
		{"negative max_entries", &csi.ListVolumesRequest{MaxEntries: -1}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.ListVolumes(context.Background(), tt.req)
			wantCode(t, err, tt.want)
		})
	}
}

func TestGetVolumeAndHealth(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a")
	good := mustCreate(t, s, mountReq("good")).GetVolumeId()
	bad := mustCreate(t, s, mountReq("bad")).GetVolumeId()
	fb.abnormal[bad] = "image file missing"
	mustPublish(t, s, good, "node-a", mountCap(snw, ""), false)

	got, err := s.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: good})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetVolume().GetVolumeId() != good || !slices.Equal(got.GetStatus().GetPublishedNodeIds(), []string{"node-a"}) {
		t.Errorf("ControllerGetVolume = %v", got)
	}
	_, err = s.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: "vol-nope"})
	wantCode(t, err, codes.NotFound)

	h, err := s.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: bad})
	if err != nil {
		t.Fatal(err)
	}
	if st := h.GetVolumeHealth().GetHealthStatuses(); len(st) != 1 || st[0].GetMessage() != "image file missing" {
		t.Errorf("health of the broken volume: %v", h)
	}
	h, err = s.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: good})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("health of the good volume: %v, %v", h, err)
	}
	list, err := s.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if e := list.GetEntries(); len(e) != 1 || e[0].GetVolumeId() != bad {
		t.Errorf("ListVolumeHealth entries %v, want only %s", e, bad)
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	s, _ := newServer(t, 0)
	req := mountReq("v")
	req.Parameters = map[string]string{"fsType": "xfs"}
	id := mustCreate(t, s, req).GetVolumeId()
	tests := []struct {
		name      string
		caps      []*csi.VolumeCapability
		confirmed bool
	}{
		{"same", []*csi.VolumeCapability{mountCap(snw, "")}, true},
		{"same fsType", []*csi.VolumeCapability{mountCap(mnsw, "xfs")}, true},
		{"other fsType", []*csi.VolumeCapability{mountCap(snw, "ext4")}, false},
		{"block", []*csi.VolumeCapability{blockCap(snw)}, false},
		{"multi writer mount", []*csi.VolumeCapability{mountCap(mnmw, "")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := s.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: id, VolumeCapabilities: tt.caps})
			if err != nil {
				t.Fatal(err)
			}
			if (resp.GetConfirmed() != nil) != tt.confirmed {
				t.Fatalf("confirmed = %v (message %q), want %t", resp.GetConfirmed(), resp.GetMessage(), tt.confirmed)
			}
			if !tt.confirmed && resp.GetMessage() == "" {
				t.Error("unconfirmed without a message")
			}
		})
	}
	_, err := s.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: "vol-nope", VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "")}})
	wantCode(t, err, codes.NotFound)
	_, err = s.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id})
	wantCode(t, err, codes.InvalidArgument)
}

func TestGetCapacity(t *testing.T) {
	s, fb := newServer(t, 0)
	fb.capacity = 42 * giB
	resp, err := s.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAvailableCapacity() != 42*giB || resp.GetMinimumVolumeSize().GetValue() != 16*miB || resp.GetMaximumVolumeSize() != nil {
		t.Errorf("GetCapacity = %v", resp)
	}
	fb.info.MaxSize = 64 * giB
	s = New(fb, 0)
	if resp, err = s.GetCapacity(context.Background(), &csi.GetCapacityRequest{}); err != nil || resp.GetMaximumVolumeSize().GetValue() != 64*giB {
		t.Errorf("GetCapacity with a largest size = %v, %v", resp, err)
	}
	_, err = s.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: map[string]string{"nope": "1"}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestCreateSnapshot(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	v1 := mustCreate(t, s, mountReq("v1")).GetVolumeId()
	v2 := mustCreate(t, s, mountReq("v2")).GetVolumeId()

	for _, tt := range []struct {
		name string
		req  *csi.CreateSnapshotRequest
		want codes.Code
	}{
		{"no name", &csi.CreateSnapshotRequest{SourceVolumeId: v1}, codes.InvalidArgument},
		{"no source", &csi.CreateSnapshotRequest{Name: "s"}, codes.InvalidArgument},
		{"parameters", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v1, Parameters: map[string]string{"a": "b"}}, codes.InvalidArgument},
		{"unknown source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "vol-nope"}, codes.NotFound},
	} {
		_, err := s.CreateSnapshot(ctx, tt.req)
		if csierr.Code(err) != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}

	first, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v1})
	if err != nil {
		t.Fatal(err)
	}
	sn := first.GetSnapshot()
	if sn.GetSourceVolumeId() != v1 || !sn.GetReadyToUse() || sn.GetSizeBytes() != 1*giB || sn.GetCreationTime() == nil {
		t.Errorf("snapshot %v", sn)
	}
	again, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v1})
	if err != nil || again.GetSnapshot().GetSnapshotId() != sn.GetSnapshotId() {
		t.Fatalf("retry: %v, %v; want %s", again, err, sn.GetSnapshotId())
	}
	_, err = s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v2})
	wantCode(t, err, codes.AlreadyExists)
	if all, _ := fb.ListSnapshots(ctx); len(all) != 1 {
		t.Fatalf("backend has %d snapshots, want 1", len(all))
	}

	got, err := s.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: sn.GetSnapshotId()})
	if err != nil || got.GetSnapshot().GetSnapshotId() != sn.GetSnapshotId() {
		t.Fatalf("GetSnapshot: %v, %v", got, err)
	}
	for range 2 {
		if _, err := s.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.GetSnapshotId()}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: sn.GetSnapshotId()})
	wantCode(t, err, codes.NotFound)
	_, err = s.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = s.GetSnapshot(ctx, &csi.GetSnapshotRequest{})
	wantCode(t, err, codes.InvalidArgument)
}

func TestListSnapshots(t *testing.T) {
	for _, paged := range []bool{false, true} {
		t.Run(fmt.Sprintf("paged=%t", paged), func(t *testing.T) { testListSnapshots(t, paged) })
	}
}

// testListSnapshots lists the snapshots of a backend that reads pages
// itself (paged) or of one that lists them all.
func testListSnapshots(t *testing.T, paged bool) {
	ctx := context.Background()
	fb := newFakeBackend()
	var be backend.Controller = fb
	if paged {
		be = pagingBackend{fb}
	}
	s := New(be, 0)
	va := mustCreate(t, s, mountReq("a")).GetVolumeId()
	vb := mustCreate(t, s, mountReq("b")).GetVolumeId()
	snap := func(name, vol string) string {
		resp, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: vol})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetSnapshot().GetSnapshotId()
	}
	a1, a2, b1 := snap("a1", va), snap("a2", va), snap("b1", vb)

	tests := []struct {
		name     string
		req      *csi.ListSnapshotsRequest
		want     []string
		wantNext bool
	}{
		{"all", &csi.ListSnapshotsRequest{}, []string{a1, a2, b1}, false},
		{"by source", &csi.ListSnapshotsRequest{SourceVolumeId: va}, []string{a1, a2}, false},
		{"by unknown source", &csi.ListSnapshotsRequest{SourceVolumeId: "vol-nope"}, nil, false},
		{"by id", &csi.ListSnapshotsRequest{SnapshotId: b1}, []string{b1}, false},
		{"by unknown id", &csi.ListSnapshotsRequest{SnapshotId: "snap-nope"}, nil, false},
		{"by id and another source", &csi.ListSnapshotsRequest{SnapshotId: b1, SourceVolumeId: va}, nil, false},
		{"by id and its source", &csi.ListSnapshotsRequest{SnapshotId: b1, SourceVolumeId: vb}, []string{b1}, false},
		{"first page of a source", &csi.ListSnapshotsRequest{SourceVolumeId: va, MaxEntries: 1}, []string{a1}, true},
		{"next page of a source", &csi.ListSnapshotsRequest{SourceVolumeId: va, MaxEntries: 1, StartingToken: "after:" + a1}, []string{a2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := s.ListSnapshots(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range resp.GetEntries() {
				got = append(got, e.GetSnapshot().GetSnapshotId())
			}
			if !slices.Equal(got, tt.want) || (resp.GetNextToken() != "") != tt.wantNext {
				t.Fatalf("got %v next %q, want %v next %t", got, resp.GetNextToken(), tt.want, tt.wantNext)
			}
		})
	}
	// The source filter must not disturb a later unfiltered listing.
	lists := fb.callCount("ListSnapshots")
	resp, err := s.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil || len(resp.GetEntries()) != 3 {
		t.Fatalf("unfiltered listing after filtered ones: %v, %v", resp, err)
	}
	if n := fb.callCount("ListSnapshots") - lists; paged && n > 0 {
		t.Errorf("a paged listing listed every snapshot %d times", n)
	}
	_, err = s.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted)
	_, err = s.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: -3})
	wantCode(t, err, codes.InvalidArgument)
	if pages, lists := fb.callCount("SnapshotsPage"), fb.callCount("ListSnapshots"); paged != (pages > 0) || paged && lists > 0 {
		t.Errorf("%d pages read by the backend, %d listings of every snapshot", pages, lists)
	}
}

func TestControllerExpandVolume(t *testing.T) {
	ctx := context.Background()
	expand := func(s *Server, id string, r *csi.CapacityRange) (*csi.ControllerExpandVolumeResponse, error) {
		return s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: r})
	}
	tests := []struct {
		name     string
		r        *csi.CapacityRange
		want     int64 // size after, when the call succeeds
		wantCode codes.Code
	}{
		{"grow rounded up", &csi.CapacityRange{RequiredBytes: 1*giB + 1}, 1*giB + 1*miB, codes.OK},
		{"grow within limit", &csi.CapacityRange{RequiredBytes: 2 * giB, LimitBytes: 3 * giB}, 2 * giB, codes.OK},
		{"shrink request keeps the size", &csi.CapacityRange{RequiredBytes: 100 * miB}, 1 * giB, codes.OK},
		{"same size", &csi.CapacityRange{RequiredBytes: 1 * giB}, 1 * giB, codes.OK},
		{"limit below current size", &csi.CapacityRange{RequiredBytes: 100 * miB, LimitBytes: 500 * miB}, 0, codes.OutOfRange},
		{"limit only, below current size", &csi.CapacityRange{LimitBytes: 500 * miB}, 0, codes.OutOfRange},
		{"rounding passes the limit", &csi.CapacityRange{RequiredBytes: 2*giB + 1, LimitBytes: 2*giB + 10}, 0, codes.OutOfRange},
		{"required above limit", &csi.CapacityRange{RequiredBytes: 3 * giB, LimitBytes: 2 * giB}, 0, codes.InvalidArgument},
		{"no range", nil, 0, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, fb := newServer(t, 0)
			id := mustCreate(t, s, mountReq("v")).GetVolumeId()
			resp, err := expand(s, id, tt.r)
			wantCode(t, err, tt.wantCode)
			got := fb.volume(id).CapacityBytes
			if err != nil {
				if got != 1*giB {
					t.Fatalf("failed expansion changed the size to %d", got)
				}
				return
			}
			if resp.GetCapacityBytes() != tt.want || got != tt.want {
				t.Fatalf("size: response %d, backend %d, want %d", resp.GetCapacityBytes(), got, tt.want)
			}
			if !resp.GetNodeExpansionRequired() {
				t.Error("node expansion not requested: the loop device must learn the new size")
			}
		})
	}

	s, _ := newServer(t, 0)
	_, err := expand(s, "", &csi.CapacityRange{RequiredBytes: giB})
	wantCode(t, err, codes.InvalidArgument)
	_, err = expand(s, "vol-nope", &csi.CapacityRange{RequiredBytes: giB})
	wantCode(t, err, codes.NotFound)
	id := mustCreate(t, s, mountReq("v")).GetVolumeId()
	_, err = s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * giB}, VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_UNKNOWN, "")})
	wantCode(t, err, codes.InvalidArgument)
}

func TestControllerModifyVolume(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	id := mustCreate(t, s, mountReq("v")).GetVolumeId()
	tests := []struct {
		name   string
		id     string
		params map[string]string
		want   codes.Code
	}{
		{"no volume id", "", map[string]string{"iops": "1"}, codes.InvalidArgument},
		{"no parameters", id, nil, codes.OK},
		{"empty parameters", id, map[string]string{}, codes.OK},
		{"no parameters, unknown volume", "vol-nope", nil, codes.NotFound},
		{"empty parameters, unknown volume", "vol-nope", map[string]string{}, codes.NotFound},
		{"unknown parameter", id, map[string]string{"speed": "1"}, codes.InvalidArgument},
		{"bad value", id, map[string]string{"iops": "lots"}, codes.InvalidArgument},
		{"unknown volume", "vol-nope", map[string]string{"iops": "1"}, codes.NotFound},
		{"ok", id, map[string]string{"iops": "500"}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: tt.id, MutableParameters: tt.params})
			wantCode(t, err, tt.want)
			if tt.name == "unknown parameter" && !strings.Contains(err.Error(), "iops") {
				t.Errorf("error %q does not name the accepted parameters", err)
			}
		})
	}
	if got := fb.volume(id).MutableParameters; !maps.Equal(got, map[string]string{"iops": "500"}) {
		t.Fatalf("mutable parameters %v, want iops=500", got)
	}
	// An empty request changes nothing and reaches no backend call that would.
	calls := fb.callCount("ModifyVolume")
	if _, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if got := fb.volume(id).MutableParameters; !maps.Equal(got, map[string]string{"iops": "500"}) || fb.callCount("ModifyVolume") != calls {
		t.Fatalf("an empty ModifyVolume changed the parameters to %v or called the backend", got)
	}
	// The fake keeps the map it is given for a volume that had none: the
	// request's map must not be it.
	fresh := mustCreate(t, s, mountReq("fresh")).GetVolumeId()
	params := map[string]string{"iops": "700"}
	if _, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: fresh, MutableParameters: params}); err != nil {
		t.Fatal(err)
	}
	params["iops"] = "1"
	if got := fb.volume(fresh).MutableParameters; !maps.Equal(got, map[string]string{"iops": "700"}) {
		t.Fatalf("mutable parameters %v, want iops=700", got)
	}
}

func TestVolumeGroupSnapshots(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	va := mustCreate(t, s, mountReq("a")).GetVolumeId()
	vb := mustCreate(t, s, mountReq("b")).GetVolumeId()
	vc := mustCreate(t, s, mountReq("c")).GetVolumeId()

	for _, tt := range []struct {
		name string
		req  *csi.CreateVolumeGroupSnapshotRequest
		want codes.Code
	}{
		{"no name", &csi.CreateVolumeGroupSnapshotRequest{SourceVolumeIds: []string{va}}, codes.InvalidArgument},
		{"no sources", &csi.CreateVolumeGroupSnapshotRequest{Name: "g"}, codes.InvalidArgument},
		{"duplicate source", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vb, va}}, codes.InvalidArgument},
		{"empty source", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, ""}}, codes.InvalidArgument},
		{"parameters", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va}, Parameters: map[string]string{"x": "y"}}, codes.InvalidArgument},
		{"unknown source", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, "vol-nope"}}, codes.NotFound},
	} {
		_, err := s.CreateVolumeGroupSnapshot(ctx, tt.req)
		if csierr.Code(err) != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
	if all, _ := fb.ListSnapshots(ctx); len(all) != 0 {
		t.Fatalf("refused group requests left %d snapshots", len(all))
	}

	// The sources' order does not matter.
	created, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vb, va}})
	if err != nil {
		t.Fatal(err)
	}
	g := created.GetGroupSnapshot()
	if g.GetGroupSnapshotId() == "" || !g.GetReadyToUse() || len(g.GetSnapshots()) != 2 || g.GetCreationTime() == nil {
		t.Fatalf("group %v", g)
	}
	var memberIDs, sources []string
	for _, sn := range g.GetSnapshots() {
		if sn.GetGroupSnapshotId() != g.GetGroupSnapshotId() {
			t.Errorf("member %v does not name its group", sn)
		}
		memberIDs = append(memberIDs, sn.GetSnapshotId())
		sources = append(sources, sn.GetSourceVolumeId())
	}
	slices.Sort(sources)
	if want := slices.Sorted(slices.Values([]string{va, vb})); !slices.Equal(sources, want) {
		t.Fatalf("member sources %v, want %v", sources, want)
	}

	retry, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vb}})
	if err != nil {
		t.Fatal(err)
	}
	var retryIDs []string
	for _, sn := range retry.GetGroupSnapshot().GetSnapshots() {
		retryIDs = append(retryIDs, sn.GetSnapshotId())
	}
	if retry.GetGroupSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() || !slices.Equal(retryIDs, memberIDs) {
		t.Fatalf("retry gave %v, want %v", retry.GetGroupSnapshot(), g)
	}
	_, err = s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vc}})
	wantCode(t, err, codes.AlreadyExists)
	if all, _ := fb.ListSnapshots(ctx); len(all) != 2 {
		t.Fatalf("backend has %d snapshots, want 2", len(all))
	}

	got, err := s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()})
	if err != nil || len(got.GetGroupSnapshot().GetSnapshots()) != 2 {
		t.Fatalf("GetVolumeGroupSnapshot: %v, %v", got, err)
	}
	// A snapshot list mismatch is INVALID_ARGUMENT (CSI spec), and a
	// refused delete deletes nothing.
	single, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "lone", SourceVolumeId: vc})
	if err != nil {
		t.Fatal(err)
	}
	lone := single.GetSnapshot().GetSnapshotId()
	_, err = s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(),
		SnapshotIds: memberIDs[:1]})
	wantCode(t, err, codes.InvalidArgument)
	for _, ids := range [][]string{
		{memberIDs[0], "snap-other"},
		{memberIDs[0], lone},
		append(slices.Clone(memberIDs), lone),
	} {
		_, err = s.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(),
			SnapshotIds: ids})
		wantCode(t, err, codes.InvalidArgument)
	}
	if all, _ := fb.ListSnapshots(ctx); len(all) != 3 {
		t.Fatalf("refused deletes left %d snapshots, want 3", len(all))
	}
	_, err = s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: "group-nope"})
	wantCode(t, err, codes.NotFound)
	_, err = s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{})
	wantCode(t, err, codes.InvalidArgument)

	for range 2 {
		if _, err := s.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{
			GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: memberIDs}); err != nil {
			t.Fatal(err)
		}
	}
	if all, _ := fb.ListSnapshots(ctx); len(all) != 1 || all[0].ID != lone {
		t.Fatalf("snapshots %v remain after the group was deleted, want only %s", all, lone)
	}
	_, err = s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()})
	wantCode(t, err, codes.NotFound)
	// Once deleted, the name may be used for other volumes.
	if _, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vc}}); err != nil {
		t.Fatal(err)
	}
}

// A group whose creation failed half way is completed by the retry, keeping
// the member made by the first attempt.
func TestVolumeGroupSnapshotResume(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	va := mustCreate(t, s, mountReq("a")).GetVolumeId()
	vb := mustCreate(t, s, mountReq("b")).GetVolumeId()
	fail := true
	fb.createSnapshotFn = func(_ context.Context, spec backend.SnapshotSpec) error {
		if fail && spec.SourceVolumeID == vb {
			return errors.New("disk full")
		}
		return nil
	}
	_, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vb}})
	wantCode(t, err, codes.Internal)
	partial, _ := fb.ListSnapshots(ctx)
	if len(partial) != 1 || partial[0].SourceVolumeID != va {
		t.Fatalf("after the failed attempt: %v, want one member of %s", partial, va)
	}
	fail = false
	resp, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vb}})
	if err != nil {
		t.Fatal(err)
	}
	members := resp.GetGroupSnapshot().GetSnapshots()
	if len(members) != 2 || !slices.ContainsFunc(members, func(sn *csi.Snapshot) bool { return sn.GetSnapshotId() == partial[0].ID }) {
		t.Fatalf("members %v, want 2 including %s", members, partial[0].ID)
	}
}

// A delete of a group that was cut short after some members were gone is
// completed by the retry, which names every member as the spec requires.
func TestDeleteVolumeGroupSnapshotResume(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	va := mustCreate(t, s, mountReq("a")).GetVolumeId()
	vb := mustCreate(t, s, mountReq("b")).GetVolumeId()
	resp, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{va, vb}})
	if err != nil {
		t.Fatal(err)
	}
	g := resp.GetGroupSnapshot()
	var ids []string
	for _, sn := range g.GetSnapshots() {
		ids = append(ids, sn.GetSnapshotId())
	}
	if err := fb.DeleteSnapshot(ctx, ids[0]); err != nil { // the first attempt got this far
		t.Fatal(err)
	}
	if _, err := s.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{
		GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids}); err != nil {
		t.Fatalf("retry of a partial delete: %v", err)
	}
	if all, _ := fb.ListSnapshots(ctx); len(all) != 0 {
		t.Fatalf("snapshots %v remain", all)
	}
}

// blocker makes a fake backend call wait: entered receives when the call
// starts, and the call returns once release is closed.
type blocker struct {
	entered chan struct{}
	release chan struct{}
}

func newBlocker(t *testing.T) *blocker {
	b := &blocker{entered: make(chan struct{}, 1), release: make(chan struct{})}
	t.Cleanup(b.unblock)
	return b
}

func (b *blocker) wait(ctx context.Context) error {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *blocker) unblock() {
	select {
	case <-b.release:
	default:
		close(b.release)
	}
}

// publishBlocked starts a publish of volume id to a node and returns once
// it is in the backend, where it waits for the blocker's release (its
// result then comes on the channel). Other volumes' publishes go through.
func publishBlocked(t *testing.T, s *Server, fb *fakeBackend, id, node string, c *csi.VolumeCapability) (*blocker, <-chan error) {
	t.Helper()
	blk := newBlocker(t)
	fb.publishFn = func(ctx context.Context, vid string, _ backend.Attachment) error {
		if vid == id {
			return blk.wait(ctx)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- publish(s, id, node, c, false) }()
	<-blk.entered
	return blk, done
}

// TestPerVolumeLock checks that a second operation on a volume that is busy
// fails at once with Aborted, while other volumes are not held up.
func TestPerVolumeLock(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0, "node-a", "node-b")
	req := mountReq("busy")
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mnro, "")}
	busy := mustCreate(t, s, req).GetVolumeId()
	other := mustCreate(t, s, mountReq("other")).GetVolumeId()

	blk, done := publishBlocked(t, s, fb, busy, "node-a", mountCap(mnro, ""))

	ops := map[string]func() error{
		"publish to another node": func() error { return publish(s, busy, "node-b", mountCap(mnro, ""), false) },
		"unpublish": func() error {
			_, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: busy, NodeId: "node-a"})
			return err
		},
		"delete": func() error {
			_, err := s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: busy})
			return err
		},
		"expand": func() error {
			_, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: busy,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * giB}})
			return err
		},
		"modify": func() error {
			_, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: busy,
				MutableParameters: map[string]string{"iops": "5"}})
			return err
		},
		"snapshot": func() error {
			_, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: busy})
			return err
		},
		"clone": func() error {
			r := mountReq("clone")
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: busy}}}
			_, err := s.CreateVolume(ctx, r)
			return err
		},
		"group snapshot": func() error {
			_, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{other, busy}})
			return err
		},
	}
	for _, name := range slices.Sorted(maps.Keys(ops)) {
		err := ops[name]()
		wantCode(t, err, codes.Aborted)
		if !strings.Contains(err.Error(), busy) {
			t.Errorf("%s: error %q does not name the busy volume", name, err)
		}
	}
	// Another volume is not held up, and a failed lock attempt left no
	// lock behind on it (the group snapshot named it too).
	mustPublish(t, s, other, "node-a", mountCap(snw, ""), false)
	if _, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s-other", SourceVolumeId: other}); err != nil {
		t.Fatal(err)
	}

	blk.unblock()
	if err := <-done; err != nil {
		t.Fatalf("the blocked publish: %v", err)
	}
	if got := attachments(t, fb, busy); len(got) != 1 || got[0].NodeID != "node-a" {
		t.Fatalf("attachments %v", got)
	}
	// With the lock released the same operations go through.
	mustPublish(t, s, busy, "node-b", mountCap(mnro, ""), false)
	if _, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: busy,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * giB}}); err != nil {
		t.Fatal(err)
	}
}

// TestCreateVolumeNameLock checks that CreateVolume holds its name, and that
// a copy holds its source, but nothing more.
func TestCreateVolumeNameLock(t *testing.T) {
	ctx := context.Background()
	s, fb := newServer(t, 0)
	src := mustCreate(t, s, mountReq("src")).GetVolumeId()
	snapOf := func(name string) string {
		resp, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetSnapshot().GetSnapshotId()
	}
	snap1, snap2 := snapOf("s1"), snapOf("s2")
	fromSnapshot := func(name, snapID string) *csi.CreateVolumeRequest {
		r := mountReq(name)
		r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}
		return r
	}

	blk := newBlocker(t)
	fb.createVolumeFn = func(ctx context.Context, spec backend.VolumeSpec) error {
		if spec.Name == "slow" {
			return blk.wait(ctx)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.CreateVolume(ctx, fromSnapshot("slow", snap1))
		done <- err
	}()
	<-blk.entered

	_, err := s.CreateVolume(ctx, fromSnapshot("slow", snap1))
	wantCode(t, err, codes.Aborted)
	_, err = s.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap1})
	wantCode(t, err, codes.Aborted)
	// Copies of other snapshots, and other names, are not held up.
	mustCreate(t, s, fromSnapshot("fast", snap2))
	mustCreate(t, s, mountReq("plain"))

	blk.unblock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap1}); err != nil {
		t.Fatal(err)
	}
}

// A volume created read-only gets read-only attachments, whatever access
// mode a later publish names.
func TestControllerPublishKeepsCreatedReadOnly(t *testing.T) {
	s, fb := newServer(t, 0, "node-a", "node-b")
	ro := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "")
	vol := mustCreate(t, s, &csi.CreateVolumeRequest{Name: "ro", VolumeCapabilities: []*csi.VolumeCapability{ro}})
	mustPublish(t, s, vol.GetVolumeId(), "node-a", mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER, ""), false)
	mustPublish(t, s, vol.GetVolumeId(), "node-b", mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER, ""), false)
	for _, a := range attachments(t, fb, vol.GetVolumeId()) {
		if !a.ReadOnly {
			t.Fatalf("attachment to %s of a MULTI_NODE_READER_ONLY volume is writable", a.NodeID)
		}
	}
}

// An expansion without required_bytes leaves the volume as it is.
func TestControllerExpandWithoutRequiredBytes(t *testing.T) {
	s, _ := newServer(t, 0)
	req := mountReq("small")
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: 16 << 20}
	vol := mustCreate(t, s, req)
	resp, err := s.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
		VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{LimitBytes: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCapacityBytes() != 16<<20 {
		t.Fatalf("expansion without required_bytes grew the volume to %d bytes", resp.GetCapacityBytes())
	}
}

// A volume restored from a snapshot keeps the snapshot's filesystem even
// after the snapshot's source volume is gone.
func TestRestoreKeepsFsTypeAfterSourceDeleted(t *testing.T) {
	s, _ := newServer(t, 0)
	ctx := context.Background()
	req := mountReq("src")
	req.Parameters = map[string]string{"fsType": "xfs"}
	src := mustCreate(t, s, req)
	snap, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	fromSnap := func(name string, params map[string]string) (*csi.CreateVolumeResponse, error) {
		r := mountReq(name)
		r.Parameters = params
		r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
		return s.CreateVolume(ctx, r)
	}
	resp, err := fromSnap("restored", nil)
	if err != nil {
		t.Fatal(err)
	}
	if fs := resp.GetVolume().GetVolumeContext()["fsType"]; fs != "xfs" {
		t.Fatalf("restored volume has fsType %q, want the snapshot's xfs", fs)
	}
	_, err = fromSnap("mislabelled", map[string]string{"fsType": "ext4"})
	wantCode(t, err, codes.InvalidArgument)
}

// A backend that reports no capacity, attaches a volume to one node at a
// time and has a largest size says so, and the controller keeps to it.
func TestBackendLimits(t *testing.T) {
	fb := newFakeBackend("n1")
	fb.info.SingleNodeOnly, fb.info.MaxSize = true, 4*giB
	// Without the CapacityReporter, but with the Expander.
	s := New(struct {
		backend.Controller
		backend.Expander
	}{fb, fb}, 0)
	ctx := context.Background()
	caps, err := s.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_GET_CAPACITY {
			t.Fatal("advertises GET_CAPACITY for a backend without a capacity figure")
		}
	}
	_, err = s.GetCapacity(ctx, &csi.GetCapacityRequest{})
	wantCode(t, err, codes.Unimplemented)

	for _, mode := range []csi.VolumeCapability_AccessMode_Mode{mnro, mnsw} {
		req := mountReq("multi-" + mode.String())
		req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(mode, "")}
		_, err = s.CreateVolume(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), "one node at a time") {
			t.Errorf("%v: error %q does not say why", mode, err)
		}
	}
	req := mountReq("big")
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: 5 * giB}
	_, err = s.CreateVolume(ctx, req)
	wantCode(t, err, codes.OutOfRange)

	req = mountReq("fits")
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: 4 * giB}
	resp, err := s.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	_, err = s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 4*giB + 1}})
	wantCode(t, err, codes.OutOfRange)
	v, err := s.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(mnro, "")}})
	if err != nil || v.GetConfirmed() != nil || !strings.Contains(v.GetMessage(), "one node at a time") {
		t.Errorf("ValidateVolumeCapabilities(MULTI_NODE_READER_ONLY) = %v, %v; want unconfirmed with the reason", v, err)
	}
	v, err = s.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(snw, "")}})
	if err != nil || v.GetConfirmed() == nil {
		t.Errorf("ValidateVolumeCapabilities(SINGLE_NODE_WRITER) = %v, %v; want confirmed", v, err)
	}
}

// advertised returns what the controller advertises: its controller
// capabilities, its plugin services and volume expansion, and its group
// controller capabilities.
func advertised(t *testing.T, s *Server) (ctrl []csi.ControllerServiceCapability_RPC_Type, plugin []string, group int) {
	t.Helper()
	ctx := context.Background()
	caps, err := s.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps.GetCapabilities() {
		ctrl = append(ctrl, c.GetRpc().GetType())
	}
	for _, c := range s.PluginCapabilities() {
		if svc := c.GetService(); svc != nil {
			plugin = append(plugin, svc.GetType().String())
		} else {
			plugin = append(plugin, "expansion "+c.GetVolumeExpansion().GetType().String())
		}
	}
	g, err := s.GroupControllerGetCapabilities(ctx, &csi.GroupControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return ctrl, plugin, len(g.GetCapabilities())
}

// The capabilities follow the optional interfaces the backend implements.
func TestCapabilitiesFollowInterfaces(t *testing.T) {
	optional := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	}
	groupSvc := csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE.String()
	online := "expansion " + csi.PluginCapability_VolumeExpansion_ONLINE.String()

	ctrl, plugin, group := advertised(t, New(newFakeBackend(), 0))
	for _, c := range optional {
		if !slices.Contains(ctrl, c) {
			t.Errorf("a backend with every feature: %v not advertised", c)
		}
	}
	if !slices.Contains(plugin, groupSvc) || !slices.Contains(plugin, online) || group != 1 {
		t.Errorf("a backend with every feature: plugin capabilities %v, %d group capabilities", plugin, group)
	}

	ctrl, plugin, group = advertised(t, New(coreOnly{newFakeBackend()}, 0))
	for _, c := range optional {
		if slices.Contains(ctrl, c) {
			t.Errorf("a backend without the feature advertises %v", c)
		}
	}
	if slices.Contains(plugin, groupSvc) || slices.Contains(plugin, online) || group != 0 {
		t.Errorf("a backend without features: plugin capabilities %v, %d group capabilities", plugin, group)
	}

	ctrl, _, _ = advertised(t, New(struct {
		backend.Controller
		backend.Snapshotter
	}{newFakeBackend(), newFakeBackend()}, 0))
	if !slices.Contains(ctrl, csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT) ||
		slices.Contains(ctrl, csi.ControllerServiceCapability_RPC_CLONE_VOLUME) {
		t.Errorf("a backend with snapshots but no copies advertises %v", ctrl)
	}
}

// A backend without the optional features gets Unimplemented for every
// call that needs one (InvalidArgument for mutable parameters in
// CreateVolume), before the backend is asked anything.
func TestBackendWithoutFeatures(t *testing.T) {
	fb := newFakeBackend("n1")
	s := New(coreOnly{fb}, 0)
	ctx := context.Background()
	resp, err := s.CreateVolume(ctx, mountReq("v"))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	fromVolume := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	fromSnapshot := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-0001"}}}
	unimplemented := map[string]func() error{
		"CreateSnapshot": func() error {
			_, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id})
			return err
		},
		"DeleteSnapshot": func() error {
			_, err := s.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-0001"})
			return err
		},
		"GetSnapshot": func() error {
			_, err := s.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: "snap-0001"})
			return err
		},
		"ListSnapshots": func() error { _, err := s.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); return err },
		"CreateVolumeGroupSnapshot": func() error {
			_, err := s.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{id}})
			return err
		},
		"GetVolumeGroupSnapshot": func() error {
			_, err := s.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: "g"})
			return err
		},
		"DeleteVolumeGroupSnapshot": func() error {
			_, err := s.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: "g"})
			return err
		},
		"ControllerExpandVolume": func() error {
			_, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * giB}})
			return err
		},
		"ControllerModifyVolume": func() error {
			_, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
				MutableParameters: map[string]string{"iops": "5"}})
			return err
		},
		"GetCapacity": func() error { _, err := s.GetCapacity(ctx, &csi.GetCapacityRequest{}); return err },
		"CreateVolume from a volume": func() error {
			req := mountReq("clone")
			req.VolumeContentSource = fromVolume
			_, err := s.CreateVolume(ctx, req)
			return err
		},
		"CreateVolume from a snapshot": func() error {
			req := mountReq("restore")
			req.VolumeContentSource = fromSnapshot
			_, err := s.CreateVolume(ctx, req)
			return err
		},
	}
	for name, call := range unimplemented {
		if err := call(); csierr.Code(err) != codes.Unimplemented {
			t.Errorf("%s: got %v, want Unimplemented", name, err)
		}
	}
	req := mountReq("mutable")
	req.MutableParameters = map[string]string{"iops": "5"}
	if _, err := s.CreateVolume(ctx, req); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("CreateVolume with mutable parameters: got %v, want InvalidArgument", err)
	}
	for _, m := range []string{"CreateVolumeFrom", "CreateSnapshot", "ExpandVolume", "ModifyVolume"} {
		if n := fb.callCount(m); n != 0 {
			t.Errorf("the backend's %s was called %d times", m, n)
		}
	}
	if n := fb.callCount("CreateVolume"); n != 1 {
		t.Errorf("the backend's CreateVolume was called %d times, want 1", n)
	}
}
