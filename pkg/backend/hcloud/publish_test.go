package hcloud

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

var writer = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func publishReq(id string, node fakecloud.Server) *csi.ControllerPublishVolumeRequest {
	return &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: sid(node), VolumeCapability: writer}
}

// createVolume creates a volume through the controller, as Swarm does,
// and returns its id.
func createVolume(t *testing.T, ctrl *controller.Server, name string) string {
	t.Helper()
	r, err := ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{writer}})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetVolume().GetVolumeId()
}

// deleteAll deletes every volume in the cloud, then checks that nothing
// is left behind.
func (e *env) deleteAll(t *testing.T) {
	t.Helper()
	for _, v := range e.cloud.Volumes() {
		if err := e.be.DeleteVolume(context.Background(), strconv.FormatInt(v.ID, 10)); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}

// attachedTo returns the server the fake has the volume attached to, or 0.
func (e *env) attachedTo(t *testing.T, id string) int64 {
	t.Helper()
	for _, v := range e.cloud.Volumes() {
		if strconv.FormatInt(v.ID, 10) == id {
			if v.Server == nil {
				return 0
			}
			return *v.Server
		}
	}
	t.Fatalf("volume %s is not in the cloud", id)
	return 0
}

// attachOutside attaches a volume as something besides this process
// would (another Swarm leader, the console), and returns the action.
func (e *env) attachOutside(t *testing.T, id string, to fakecloud.Server) *hcloud.Action {
	t.Helper()
	vid := must[int64](t)(strconv.ParseInt(id, 10, 64))
	a, _, err := e.api.Volume.Attach(context.Background(), &hcloud.Volume{ID: vid}, &hcloud.Server{ID: to.ID})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// attachedOutside is attachOutside, waiting for the attach.
func (e *env) attachedOutside(t *testing.T, id string, to fakecloud.Server) {
	t.Helper()
	if err := e.api.Action.WaitFor(context.Background(), e.attachOutside(t, id, to)); err != nil {
		t.Fatal(err)
	}
}

// A volume this process has just created is attached without being read:
// the attach itself is the check, and Hetzner's refusals lead to a read
// that gives the CSI answer. Each case changes the volume outside this
// process after its creation, so the controller's view of it is stale.
func TestPublishAttachesFirst(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	here, there := e.servers[0], e.servers[1]
	create := func(name string) string {
		t.Helper()
		return createVolume(t, ctrl, name)
	}
	attaches := func() int { return len(e.cloud.Actions("attach_volume")) }
	requests := func(want map[string]int) {
		t.Helper()
		got := e.cloud.Requests().ByRoute
		delete(got, "GET /actions")
		delete(got, "GET /servers/{id}") // the first publish to a server finds it
		for route, n := range want {
			if got[route] != n {
				t.Errorf("requests %v, want %v (besides polls)", got, want)
				return
			}
		}
		if len(got) != len(want) {
			t.Errorf("requests %v, want %v (besides polls)", got, want)
		}
	}
	refusedThenRead := map[string]int{"POST /volumes/{id}/actions/attach": 1, "GET /volumes/{id}": 1}

	t.Run("attached here already", func(t *testing.T) {
		id := create("here")
		e.attachedOutside(t, id, here)
		e.cloud.ResetRequests()
		r, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		if err != nil {
			t.Fatal(err)
		}
		if r.GetPublishContext()[pcVolume] != id {
			t.Errorf("publish context %v", r.GetPublishContext())
		}
		requests(refusedThenRead)
		if n := attaches(); n != 1 {
			t.Errorf("%d attach actions, want the one made outside", n)
		}
	})

	t.Run("attached elsewhere", func(t *testing.T) {
		before := attaches()
		id := create("elsewhere")
		e.attachedOutside(t, id, there)
		e.cloud.ResetRequests()
		_, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		wantCode(t, err, codes.FailedPrecondition)
		if !strings.Contains(err.Error(), sid(there)) {
			t.Errorf("the error does not name the server holding it: %v", err)
		}
		requests(refusedThenRead)
		if got := e.attachedTo(t, id); got != there.ID || attaches() != before+1 {
			t.Errorf("attached to %d after %d attach actions, want still to %d after 1", got, attaches()-before, there.ID)
		}
	})

	t.Run("locked by an attach here", func(t *testing.T) {
		id := create("locked-here")
		e.cloud.SetActionDelay("attach_volume", 300*time.Millisecond)
		e.attachOutside(t, id, here)
		e.cloud.SetActionDelay("attach_volume", 5*time.Millisecond)
		before := attaches()
		if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here)); err != nil {
			t.Fatal(err)
		}
		if got := e.attachedTo(t, id); got != here.ID || attaches() != before {
			t.Errorf("attached to %d after %d more attach actions, want to %d after none", got, attaches()-before, here.ID)
		}
	})

	t.Run("locked by an attach elsewhere", func(t *testing.T) {
		id := create("locked-elsewhere")
		e.cloud.SetActionDelay("attach_volume", 300*time.Millisecond)
		e.attachOutside(t, id, there)
		e.cloud.SetActionDelay("attach_volume", 5*time.Millisecond)
		_, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		wantCode(t, err, codes.FailedPrecondition)
		if got := e.attachedTo(t, id); got != there.ID {
			t.Errorf("attached to %d, want still to %d", got, there.ID)
		}
	})

	t.Run("not found", func(t *testing.T) {
		id := create("deleted")
		if _, err := e.api.Volume.Delete(ctx, &hcloud.Volume{ID: must[int64](t)(strconv.ParseInt(id, 10, 64))}); err != nil {
			t.Fatal(err)
		}
		e.cloud.ResetRequests()
		_, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		wantCode(t, err, codes.NotFound)
		requests(map[string]int{"POST /volumes/{id}/actions/attach": 1})
		// Known gone: the next look reads nothing from memory.
		_, err = ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		wantCode(t, err, codes.NotFound)
	})

	// The answer of an attach is lost (the connection breaks, the driver
	// crashes): the retry, here by a driver started afresh while the
	// attach still runs, waits for it and answers success without a
	// second attach; so does a retry by this driver.
	t.Run("retry after the attach's answer was lost", func(t *testing.T) {
		id := create("lost-answer")
		e.cloud.SetActionDelay("attach_volume", 300*time.Millisecond)
		e.cloud.Inject(fakecloud.Fault{Method: "POST", Path: "/volumes/*/actions/attach", Status: http.StatusInternalServerError, After: true})
		_, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here))
		wantCode(t, err, codes.Unavailable)
		e.cloud.SetActionDelay("attach_volume", 5*time.Millisecond)
		before := attaches()
		restarted := controller.New(e.backend(t), MaxVolumesPerServer)
		if _, err := restarted.ControllerPublishVolume(ctx, publishReq(id, here)); err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here)); err != nil {
			t.Fatal(err)
		}
		if got := e.attachedTo(t, id); got != here.ID || attaches() != before {
			t.Errorf("attached to %d after %d more attach actions, want to %d after none", got, attaches()-before, here.ID)
		}
	})

	// A readonly publish of a volume attached here for writing is refused
	// as the spec says, though the controller's view showed no attachment.
	t.Run("attached here with the other readonly", func(t *testing.T) {
		id := create("readonly")
		e.attachedOutside(t, id, here)
		req := publishReq(id, here)
		req.Readonly = true
		_, err := ctrl.ControllerPublishVolume(ctx, req)
		wantCode(t, err, codes.AlreadyExists)
	})

	e.deleteAll(t)
}

// A volume moves from one server to another: the publish after the detach
// reads nothing, and an unpublish from the first server, retried or stale,
// reads the volume and leaves it where it is now.
func TestStaleUnpublishLeavesTheVolume(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	a, b := e.servers[0], e.servers[1]
	r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "moving", VolumeCapabilities: []*csi.VolumeCapability{writer}})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	unpublishA := &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sid(a)}
	for _, step := range []func() error{
		func() error { _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, a)); return err },
		func() error { _, err := ctrl.ControllerUnpublishVolume(ctx, unpublishA); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	e.cloud.ResetRequests()
	if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, b)); err != nil {
		t.Fatal(err)
	}
	if got := e.cloud.Requests().ByRoute; got["GET /volumes/{id}"] != 0 || got["POST /volumes/{id}/actions/attach"] != 1 {
		t.Errorf("the move's publish asked %v, want the attach and no read", got)
	}
	for _, again := range []*controller.Server{ctrl, controller.New(e.backend(t), MaxVolumesPerServer)} {
		if _, err := again.ControllerUnpublishVolume(ctx, unpublishA); err != nil {
			t.Fatal(err)
		}
		if got := e.attachedTo(t, id); got != b.ID {
			t.Fatalf("after a stale unpublish from %d: attached to %d, want still to %d", a.ID, got, b.ID)
		}
	}
	if len(e.cloud.Actions("detach_volume")) != 1 {
		t.Errorf("%d detach actions, want the move's one", len(e.cloud.Actions("detach_volume")))
	}
	if err := e.be.DeleteVolume(ctx, id); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// What this process remembers of a volume it has just created or detached
// serves ControllerPublishVolume only. Another controller call before the
// publish reads the volume, and sees what was changed outside this
// process (here another driver grows it); the publish that follows still
// sends the attach without a read, with the volume as last read.
func TestOnlyPublishTakesWhatIsRemembered(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	outside := e.backend(t)
	here, there := e.servers[0], e.servers[1]
	for _, s := range e.servers {
		must[bool](t)(e.be.NodeKnown(ctx, sid(s)))
	}
	getVolume := func(id string, wantGiB int64) error {
		r, err := ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		if got := r.GetVolume().GetCapacityBytes(); err == nil && got != wantGiB*backend.GiB {
			err = fmt.Errorf("capacity %d GiB, want %d", got/backend.GiB, wantGiB)
		}
		return err
	}
	// between grows the volume from outside to 20 GiB, runs call, which
	// must read the volume reads times, then publishes the volume to to:
	// an attach without a read, whose publish context gives sizeGiB.
	between := func(t *testing.T, id string, to fakecloud.Server, sizeGiB int64, call func() error, reads int) {
		t.Helper()
		must[int64](t)(outside.ExpandVolume(ctx, id, 20*backend.GiB))
		e.cloud.ResetRequests()
		if err := call(); err != nil {
			t.Fatal(err)
		}
		if got := e.cloud.Requests().ByRoute["GET /volumes/{id}"]; got != reads {
			t.Errorf("the call read the volume %d times, want %d", got, reads)
		}
		e.cloud.ResetRequests()
		r, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, to))
		if err != nil {
			t.Fatal(err)
		}
		got := e.cloud.Requests().ByRoute
		delete(got, "GET /actions")
		if want := map[string]int{"POST /volumes/{id}/actions/attach": 1}; !maps.Equal(got, want) {
			t.Errorf("the publish asked %v, want %v (besides polls)", got, want)
		}
		if pc := r.GetPublishContext(); pc[pcSizeGiB] != strconv.FormatInt(sizeGiB, 10) {
			t.Errorf("publish context %v, want the size %d GiB", pc, sizeGiB)
		}
	}
	t.Run("ControllerGetVolume", func(t *testing.T) {
		id := createVolume(t, ctrl, "get")
		between(t, id, here, 20, func() error { return getVolume(id, 20) }, 1)
	})
	t.Run("ValidateVolumeCapabilities", func(t *testing.T) {
		id := createVolume(t, ctrl, "validate")
		between(t, id, here, 20, func() error {
			r, err := ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{writer}})
			if err == nil && r.GetConfirmed() == nil {
				err = fmt.Errorf("not confirmed: %s", r.GetMessage())
			}
			return err
		}, 1)
	})
	t.Run("ControllerExpandVolume", func(t *testing.T) {
		id := createVolume(t, ctrl, "expand")
		between(t, id, here, 30, func() error {
			_, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 30 * backend.GiB}})
			return err
		}, 2) // the controller's look, then the backend's before the resize
	})
	// A volume moving from one server to another: the publish after the
	// detach is spared its read the same way.
	t.Run("after a detach", func(t *testing.T) {
		id := createVolume(t, ctrl, "moving")
		if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here)); err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sid(here)}); err != nil {
			t.Fatal(err)
		}
		between(t, id, there, 20, func() error { return getVolume(id, 20) }, 1)
	})

	e.deleteAll(t)
}

// What is remembered of a created volume serves a publish within
// idleFor of the creation; a read in between does not make it last
// longer.
func TestRememberedForAWhile(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	clk := &clock{t: time.Now()}
	e.be.now = clk.now
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	here := e.servers[0]
	must[bool](t)(e.be.NodeKnown(ctx, sid(here)))
	for _, c := range []struct {
		name      string
		look      bool // ControllerGetVolume before the second wait
		wait      time.Duration
		wantReads int
	}{
		{"within", false, idleFor - time.Minute, 0},
		{"within, looked at", true, idleFor - time.Minute, 0},
		{"too late", false, idleFor + time.Minute, 1},
		{"too late, looked at", true, idleFor + time.Minute, 1},
	} {
		id := createVolume(t, ctrl, c.name)
		clk.add(c.wait - 2*time.Minute)
		if c.look {
			if _, err := ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		}
		clk.add(2 * time.Minute)
		e.cloud.ResetRequests()
		if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, here)); err != nil {
			t.Fatal(err)
		}
		if n := e.cloud.Requests().ByRoute["GET /volumes/{id}"]; n != c.wantReads {
			t.Errorf("%s: the publish read the volume %d times, want %d", c.name, n, c.wantReads)
		}
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}
