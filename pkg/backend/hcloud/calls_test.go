package hcloud

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// rpcs are the steps of a volume's lifecycle as Swarm drives it.
var rpcs = []string{"CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume",
	"ControllerUnpublishVolume", "DeleteVolume"}

// calls are the API requests of one lifecycle, by RPC and route.
type calls map[string]map[string]int

func (c calls) total() int {
	n := 0
	for _, byRoute := range c {
		for _, k := range byRoute {
			n += k
		}
	}
	return n
}

// withoutPolls is c without the polls of actions, whose number depends on
// timing.
func (c calls) withoutPolls() calls {
	out := calls{}
	for rpc, byRoute := range c {
		out[rpc] = maps.Clone(byRoute)
		delete(out[rpc], "GET /actions")
	}
	return out
}

func (c calls) polls() int {
	n := 0
	for _, byRoute := range c {
		n += byRoute["GET /actions"]
	}
	return n
}

// lifecycle drives a volume through the controller's RPCs, and through
// the node's backend calls as NodeStageVolume and NodePublishVolume make
// them (with the publish context, or without it as after a Swarm leader
// change), and returns each step's API requests.
func (e *env) lifecycle(t *testing.T, ctrl *controller.Server, n *NodeSide, name string, withPC bool) calls {
	t.Helper()
	ctx := context.Background()
	out := calls{}
	var id string
	var pc map[string]string
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	for _, rpc := range rpcs {
		e.cloud.ResetRequests()
		var err error
		switch rpc {
		case "CreateVolume":
			var r *csi.CreateVolumeResponse
			r, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{capability}})
			id = r.GetVolume().GetVolumeId()
		case "ControllerPublishVolume":
			var r *csi.ControllerPublishVolumeResponse
			r, err = ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sid(e.servers[0]), VolumeCapability: capability})
			pc = r.GetPublishContext()
		case "NodeStageVolume", "NodePublishVolume":
			nctx := ctx
			if withPC {
				nctx = backend.WithPublishContext(ctx, pc)
			}
			var v *backend.Volume
			if v, err = n.Volume(nctx, id); err == nil && (v.FsType != "ext4" || v.AccessMode != "SINGLE_NODE_WRITER" || v.CapacityBytes != MinSize) {
				err = fmt.Errorf("the node sees %+v", v)
			}
		case "ControllerUnpublishVolume":
			_, err = ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sid(e.servers[0])})
		case "DeleteVolume":
			_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		}
		if err != nil {
			t.Fatalf("%s %s: %v", rpc, name, err)
		}
		out[rpc] = e.cloud.Requests().ByRoute
	}
	return out
}

// steady is what one lifecycle asks the API once the driver runs, besides
// polls: one per action (create, attach, detach) when actions take as
// long as the driver has seen them take. The publish does not read the
// volume it has just created (the attach is refused if it is attached);
// the unpublish does, to detach it only from the node named.
var steady = calls{
	"CreateVolume":              {"POST /volumes": 1},
	"ControllerPublishVolume":   {"POST /volumes/{id}/actions/attach": 1},
	"NodeStageVolume":           {},
	"NodePublishVolume":         {},
	"ControllerUnpublishVolume": {"GET /volumes/{id}": 1, "POST /volumes/{id}/actions/detach": 1},
	"DeleteVolume":              {"DELETE /volumes/{id}": 1},
}

func checkCalls(t *testing.T, what string, got, want calls, maxPolls int) {
	t.Helper()
	for _, rpc := range rpcs {
		if g := got.withoutPolls()[rpc]; !maps.Equal(g, want[rpc]) && !(len(g) == 0 && len(want[rpc]) == 0) {
			t.Errorf("%s: %s asked the API %v, want %v", what, rpc, g, want[rpc])
		}
	}
	if p := got.polls(); p > maxPolls {
		t.Errorf("%s: %d polls, want at most %d: %v", what, p, maxPolls, got)
	}
}

// TestCallsPerRPC pins the API requests of each RPC of a lifecycle: 8 in
// all once the driver runs (3 of them polls), 9 for the first after a
// start, and as many with 1,000 volumes in the project, which a publish
// never lists.
func TestCallsPerRPC(t *testing.T) {
	e := newEnv(t, false)
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	n := e.node(t, 0)

	first := e.lifecycle(t, ctrl, n, "first", true)
	withServer := maps.Clone(steady)
	withServer["ControllerPublishVolume"] = map[string]int{"GET /servers/{id}": 1, "POST /volumes/{id}/actions/attach": 1}
	checkCalls(t, "first lifecycle", first, withServer, 3)
	t.Logf("first lifecycle: %d requests: %v", first.total(), first)

	// Polls depend on timing: a loaded machine may need a second one now
	// and then, hence the slack of 2 over 5 lifecycles.
	const rounds = 5
	polls := 0
	for i := range rounds {
		got := e.lifecycle(t, ctrl, n, fmt.Sprint("steady-", i), true)
		checkCalls(t, "steady lifecycle", got, steady, 3+2)
		polls += got.polls()
	}
	if polls > 3*rounds+2 {
		t.Errorf("%d polls in %d lifecycles, want at most %d", polls, rounds, 3*rounds+2)
	}

	// A project with 1,000 volumes of this cluster: the same requests.
	labels := map[string]string{LabelCluster: "test", LabelName: nameHash("other"), labelFs: "ext4", labelAccessMode: "SINGLE_NODE_WRITER"}
	others, err := e.cloud.AddVolumes(1000, "fsn1", labels)
	if err != nil {
		t.Fatal(err)
	}
	checkCalls(t, "with 1,000 volumes", e.lifecycle(t, ctrl, n, "crowded", true), steady, 3+2)

	// A per-node limit below the server's own is counted from the server.
	limited := controller.New(e.be, MaxVolumesPerServer/2)
	checkCalls(t, "with a per-node limit of 8", e.lifecycle(t, limited, n, "limited", true), withServer, 3+2)

	// Without the publish context (lost by Swarm), the node reads the
	// volume: one request for each of its calls.
	lost := maps.Clone(steady)
	lost["NodeStageVolume"] = map[string]int{"GET /volumes/{id}": 1}
	lost["NodePublishVolume"] = map[string]int{"GET /volumes/{id}": 1}
	checkCalls(t, "without the publish context", e.lifecycle(t, ctrl, n, "lost", false), lost, 3+2)

	e.cloud.RemoveVolumes(others)
	e.checkClean(t)
}

// A publish context that does not describe the volume is not trusted: the
// node reads the volume.
func TestPublishContextChecked(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	n := e.node(t, 0)
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("pc")))
	pc := must[map[string]string](t)(e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])}))
	for name, change := range map[string]func(map[string]string){
		"other volume": func(pc map[string]string) { pc[pcVolume] = "1" },
		"no size":      func(pc map[string]string) { delete(pc, pcSizeGiB) },
		"bad fs":       func(pc map[string]string) { pc[labelFs] = "ntfs" },
		"other swarm":  func(pc map[string]string) { pc[LabelCluster] = "other" },
	} {
		bad := maps.Clone(pc)
		change(bad)
		e.cloud.ResetRequests()
		got, err := n.Volume(backend.WithPublishContext(ctx, bad), v.ID)
		if err != nil || got.FsType != "ext4" || e.cloud.Requests().Total != 1 {
			t.Errorf("%s: %+v, %v after %d requests, want the volume read once", name, got, err, e.cloud.Requests().Total)
		}
	}
	e.cloud.ResetRequests()
	got := must[*backend.Volume](t)(n.Volume(backend.WithPublishContext(ctx, pc), v.ID))
	if _, ok := got.AttachedTo(sid(e.servers[0])); !ok || got.FsType != "ext4" || e.cloud.Requests().Total != 0 {
		t.Errorf("from the publish context: %+v after %d requests", got, e.cloud.Requests().Total)
	}
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// On a server, a volume whose device is there is as last told: the growth
// check, stats and health ask the API nothing for it. Once the volume is
// detached it is read again.
func TestNodeKeepsAttachedVolumes(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, true)
	ctx := context.Background()
	n := e.node(t, 0)
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("kept")))
	pc := must[map[string]string](t)(e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])}))
	e.cloud.ResetRequests()
	must[*backend.Volume](t)(n.Volume(backend.WithPublishContext(ctx, pc), v.ID))
	for range 3 {
		got := must[*backend.Volume](t)(n.Volume(ctx, v.ID))
		if _, ok := got.AttachedTo(sid(e.servers[0])); !ok || got.FsType != "ext4" {
			t.Fatalf("kept volume %+v", got)
		}
	}
	if r := e.cloud.Requests().Total; r != 0 {
		t.Errorf("%d requests for a volume attached here", r)
	}
	if err := e.be.Unpublish(ctx, v.ID, sid(e.servers[0])); err != nil {
		t.Fatal(err)
	}
	e.cloud.ResetRequests()
	if got := must[*backend.Volume](t)(n.Volume(ctx, v.ID)); len(got.Attachments) != 0 || e.cloud.Requests().Total != 1 {
		t.Errorf("after the detach: %+v after %d requests, want it read, unattached", got, e.cloud.Requests().Total)
	}
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}
