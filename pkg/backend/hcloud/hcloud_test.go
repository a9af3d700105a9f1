package hcloud

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

const testToken = "test-token-4f8a1c2e9b"

// env is a fake cloud with two servers in fsn1 and one in hel1, and the
// backend on it.
type env struct {
	cloud    *fakecloud.Cloud
	be       *Backend
	api      *hcloud.Client // the fake, directly
	servers  []fakecloud.Server
	far      fakecloud.Server
	endpoint string
}

type option func(*Config)

func withWait(d time.Duration) option { return func(c *Config) { c.Wait = d } }
func withToken(t string) option       { return func(c *Config) { c.Token = t } }
func withCluster(n string) option     { return func(c *Config) { c.Cluster = n } }

// newEnv starts the fake cloud, with loop devices if devices is set.
func newEnv(t *testing.T, devices bool, opts ...option) *env {
	t.Helper()
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: t.TempDir(), Token: testToken, ActionDelay: 5 * time.Millisecond, NoDevices: !devices})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Errorf("closing the fake cloud: %v", err)
		}
	})
	e := &env{cloud: cloud, endpoint: cloud.URL()}
	for _, name := range []string{"node-1", "node-2"} {
		s, err := cloud.AddServer(name, "fsn1")
		if err != nil {
			t.Fatal(err)
		}
		e.servers = append(e.servers, s)
	}
	if e.far, err = cloud.AddServer("far", "hel1"); err != nil {
		t.Fatal(err)
	}
	e.api = hcloud.NewClient(hcloud.WithToken(testToken), hcloud.WithEndpoint(cloud.URL()),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(5 * time.Millisecond)}))
	e.be = e.backend(t, opts...)
	return e
}

// backend returns another backend on the same cloud.
func (e *env) backend(t *testing.T, opts ...option) *Backend {
	t.Helper()
	cfg := Config{Token: testToken, Endpoint: e.endpoint, Location: "fsn1", Cluster: "test", Wait: 2 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	be, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func (e *env) node(t *testing.T, i int) *NodeSide {
	t.Helper()
	n, err := e.be.ForNode(e.servers[i].ID, e.servers[i].DeviceDir)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sid(s fakecloud.Server) string { return strconv.FormatInt(s.ID, 10) }

func spec(name string) backend.VolumeSpec {
	return backend.VolumeSpec{Name: name, CapacityBytes: MinSize, FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER"}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := csierr.Code(err); got != want {
		t.Fatalf("got code %v (error %v), want %v", got, err, want)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// checkClean asserts that the cloud holds no volume and nothing the fake
// cannot explain: no loop device, link or image left behind.
func (e *env) checkClean(t *testing.T) {
	t.Helper()
	if err := e.cloud.WaitIdle(5 * time.Second); err != nil {
		t.Error(err)
	}
	if vols := e.cloud.Volumes(); len(vols) > 0 {
		t.Errorf("volumes left: %+v", vols)
	}
	if left := e.cloud.Leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	good := Config{Token: "t", Endpoint: "https://api.example.com/v1", Location: "fsn1", Cluster: "swarm-1"}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"endpoint":       func(c *Config) { c.Endpoint = "ftp://x" },
		"endpoint query": func(c *Config) { c.Endpoint = "https://x/v1?a=b" },
		"location":       func(c *Config) { c.Location = "" },
		"location case":  func(c *Config) { c.Location = "FSN1" },
		"cluster":        func(c *Config) { c.Cluster = "" },
		"cluster chars":  func(c *Config) { c.Cluster = "my swarm" },
		"cluster long":   func(c *Config) { c.Cluster = strings.Repeat("c", 64) },
		"token":          func(c *Config) { c.Token = "two words" },
		"wait":           func(c *Config) { c.Wait = -time.Second },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted %+v", name, cfg)
		} else if strings.Contains(err.Error(), "two words") {
			t.Errorf("%s: the error repeats the token: %v", name, err)
		}
	}
}

func TestInfo(t *testing.T) {
	be, err := New(Config{Location: "nbg1", Cluster: "c"})
	if err != nil {
		t.Fatal(err)
	}
	info := be.Info()
	if info.Name != "hcloud" || info.MinSize != 10*backend.GiB || info.DefaultSize != 10*backend.GiB || info.Granularity != backend.GiB ||
		info.MaxSize != 10240*backend.GiB || info.MaxVolumesPerNode != 16 || !info.SingleNodeOnly || info.Topology[TopologyKey] != "nbg1" {
		t.Fatalf("Info() = %+v", info)
	}
}

// Hetzner Cloud volumes grow, and have none of the other optional features.
func TestOptionalFeatures(t *testing.T) {
	var be any = must[*Backend](t)(New(Config{Location: "nbg1", Cluster: "c"}))
	if _, ok := be.(backend.Expander); !ok {
		t.Error("not a backend.Expander")
	}
	if _, ok := be.(backend.Snapshotter); ok {
		t.Error("a backend.Snapshotter: Hetzner Cloud volumes have no snapshots")
	}
	if _, ok := be.(backend.Cloner); ok {
		t.Error("a backend.Cloner: Hetzner Cloud volumes cannot be copied")
	}
	if _, ok := be.(backend.Modifier); ok {
		t.Error("a backend.Modifier: Hetzner Cloud volumes have no mutable settings")
	}
	if _, ok := be.(backend.CapacityReporter); ok {
		t.Error("a backend.CapacityReporter: Hetzner Cloud reports no free capacity")
	}
}

func TestCreateVolume(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	s := spec("pgdata")
	s.CapacityBytes = 10*backend.GiB + 1 // rounded up to whole GiB
	s.MkfsOptions = "-E lazy_itable_init=1 -O ^has_journal,metadata_csum -L " + strings.Repeat("x", 60)
	s.MountOptions = "noatime,commit=30,data=ordered," + strings.Repeat("y", 60)
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, s))
	if v.CapacityBytes != 11*backend.GiB || v.FsType != "ext4" || v.Block || v.AccessMode != "SINGLE_NODE_WRITER" || v.MkfsOptions != s.MkfsOptions ||
		v.MountOptions != s.MountOptions {
		t.Fatalf("created %+v", v)
	}
	again := must[*backend.Volume](t)(e.be.CreateVolume(ctx, s))
	if again.ID != v.ID {
		t.Fatalf("a retry created volume %s besides %s", again.ID, v.ID)
	}
	got := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID))
	if got.CapacityBytes != v.CapacityBytes || got.MkfsOptions != s.MkfsOptions || got.MountOptions != s.MountOptions || got.FsType != "ext4" {
		t.Fatalf("read back %+v", got)
	}
	vols := e.cloud.Volumes()
	if len(vols) != 1 || vols[0].Size != 11 || vols[0].Location.Name != "fsn1" || vols[0].Labels[LabelCluster] != "test" ||
		vols[0].Status != "available" {
		t.Fatalf("in the cloud: %+v", vols)
	}

	b := spec("raw")
	b.Block, b.FsType, b.CapacityBytes = true, "", 0 // no size: the minimum
	bv := must[*backend.Volume](t)(e.be.CreateVolume(ctx, b))
	if !bv.Block || bv.FsType != "" || bv.CapacityBytes != MinSize {
		t.Fatalf("block volume %+v", bv)
	}
	list := must[[]*backend.Volume](t)(e.be.ListVolumes(ctx))
	if len(list) != 2 || list[0].ID > list[1].ID {
		t.Fatalf("listed %+v", list)
	}

	long := spec("long-mkfs")
	long.MkfsOptions = strings.Repeat("-x ", MaxMkfsOptions/3+1)
	_, err := e.be.CreateVolume(ctx, long)
	wantCode(t, err, codes.InvalidArgument)
	longMount := spec("long-mount")
	longMount.MountOptions = strings.Repeat("ro,", MaxMkfsOptions/3+1)
	_, err = e.be.CreateVolume(ctx, longMount)
	wantCode(t, err, codes.InvalidArgument)
	big := spec("big")
	big.CapacityBytes = MaxSize + 1
	_, err = e.be.CreateVolume(ctx, big)
	wantCode(t, err, codes.OutOfRange)
	withParams := spec("params")
	withParams.Parameters = map[string]string{"x": "y"}
	_, err = e.be.CreateVolume(ctx, withParams)
	wantCode(t, err, codes.InvalidArgument)

	for _, id := range []string{v.ID, bv.ID} {
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}

// Volumes that are not this cluster's, or whose ids are not ids, do not
// exist for the backend; deleting them does nothing.
func TestUnknownAndForeignVolumes(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	other := e.backend(t, withCluster("other"))
	mine := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("shared-name")))
	theirs := must[*backend.Volume](t)(other.CreateVolume(ctx, spec("shared-name")))
	if mine.ID == theirs.ID {
		t.Fatal("two clusters got one volume for the same name")
	}
	for _, id := range []string{theirs.ID, "0", "-1", "007", "abc", "../../etc", "99999999"} {
		_, err := e.be.Volume(ctx, id)
		wantCode(t, err, codes.NotFound)
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Errorf("DeleteVolume(%q): %v", id, err)
		}
		_, err = e.be.ExpandVolume(ctx, id, 20*backend.GiB)
		wantCode(t, err, codes.NotFound)
		if err := e.be.Unpublish(ctx, id, sid(e.servers[0])); err != nil {
			t.Errorf("Unpublish(%q): %v", id, err)
		}
	}
	if len(e.cloud.Volumes()) != 2 {
		t.Fatal("a foreign volume was deleted")
	}
	list := must[[]*backend.Volume](t)(e.be.ListVolumes(ctx))
	if len(list) != 1 || list[0].ID != mine.ID {
		t.Fatalf("listed %+v, want only %s", list, mine.ID)
	}
	// A volume of this cluster whose labels someone changed is refused
	// with the reason, and left out of the list, by a process that reads
	// it (this one lists again only after a while).
	hv, _, _ := e.api.Volume.GetByID(ctx, must[int64](t)(strconv.ParseInt(mine.ID, 10, 64)))
	labels := hv.Labels
	labels[labelFs] = "ntfs"
	if _, _, err := e.api.Volume.Update(ctx, hv, hcloud.VolumeUpdateOpts{Labels: labels}); err != nil {
		t.Fatal(err)
	}
	fresh := e.backend(t)
	_, err := fresh.Volume(ctx, mine.ID)
	wantCode(t, err, codes.FailedPrecondition)
	if list := must[[]*backend.Volume](t)(fresh.ListVolumes(ctx)); len(list) != 0 {
		t.Fatalf("listed a volume with unreadable labels: %+v", list)
	}
	for _, b := range []*Backend{e.be, other} {
		for _, id := range []string{mine.ID, theirs.ID} {
			if err := b.DeleteVolume(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.checkClean(t)
}

func TestPublishUnpublish(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("data")))
	n1, n2 := sid(e.servers[0]), sid(e.servers[1])
	for range 2 { // the second time is a retry
		if _, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: n1}); err != nil {
			t.Fatal(err)
		}
	}
	got := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID))
	if a, ok := got.AttachedTo(n1); !ok || a.ReadOnly || len(got.Attachments) != 1 {
		t.Fatalf("attachments %+v", got.Attachments)
	}
	_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: n2})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = e.be.Publish(ctx, v, backend.Attachment{NodeID: "not-a-server"})
	wantCode(t, err, codes.NotFound)
	_, err = e.be.Publish(ctx, &backend.Volume{ID: "abc"}, backend.Attachment{NodeID: n1})
	wantCode(t, err, codes.NotFound)
	if err := e.be.Unpublish(ctx, v.ID, n2); err != nil { // not attached there
		t.Fatal(err)
	}
	for range 2 {
		if err := e.be.Unpublish(ctx, v.ID, n1); err != nil {
			t.Fatal(err)
		}
	}
	if got := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID)); len(got.Attachments) != 0 {
		t.Fatalf("still attached: %+v", got.Attachments)
	}

	// Read-only publishing is remembered, so a retry compares alike.
	if _, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: n2, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if a, ok := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID)).AttachedTo(n2); !ok || !a.ReadOnly {
		t.Fatalf("read-only attachment %+v, %v", a, ok)
	}
	// A volume is in one location: a server elsewhere cannot have it.
	if err := e.be.Unpublish(ctx, v.ID, n2); err != nil {
		t.Fatal(err)
	}
	_, err = e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.far)})
	wantCode(t, err, codes.InvalidArgument)
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// createRetrying creates a volume as a CO does: on a loaded machine the
// creation may outlast a test's short action budget, and its Aborted asks
// for the retry Swarm makes.
func (e *env) createRetrying(t *testing.T, ctx context.Context, name string) *backend.Volume {
	t.Helper()
	v, err := e.be.CreateVolume(ctx, spec(name))
	for i := 0; err != nil && csierr.Code(err) == codes.Aborted && i < 50; i++ {
		v, err = e.be.CreateVolume(ctx, spec(name))
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// An attach slower than the budget answers Aborted; the retry finds the
// attach running and waits for it: one attach action in all.
func TestPublishResumesSlowAttach(t *testing.T) {
	e := newEnv(t, false, withWait(150*time.Millisecond))
	ctx := context.Background()
	v := e.createRetrying(t, ctx, "slow")
	e.cloud.SetActionDelay("attach_volume", 600*time.Millisecond)
	node := sid(e.servers[0])
	_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: node})
	wantCode(t, err, codes.Aborted)
	if !strings.Contains(err.Error(), "still in progress") {
		t.Errorf("Aborted without saying why: %v", err)
	}
	var attempts int
	for err != nil && attempts < 20 {
		attempts++
		_, err = e.be.Publish(ctx, v, backend.Attachment{NodeID: node})
		if err != nil {
			wantCode(t, err, codes.Aborted)
		}
	}
	if err != nil {
		t.Fatalf("no success after %d retries: %v", attempts, err)
	}
	if n := len(e.cloud.Actions("attach_volume")); n != 1 {
		t.Fatalf("%d attach actions, want 1", n)
	}
	if _, ok := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID)).AttachedTo(node); !ok {
		t.Fatal("not attached")
	}
}

// A caller that gives up on a slow publish and unpublishes must not find
// the volume attached later: the running attach is waited for and undone.
func TestUnpublishUndoesRunningAttach(t *testing.T) {
	e := newEnv(t, false, withWait(time.Second))
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("given-up")))
	e.cloud.SetActionDelay("attach_volume", 1500*time.Millisecond)
	node := sid(e.servers[0])
	_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: node})
	wantCode(t, err, codes.Aborted)
	e.cloud.SetActionDelay("attach_volume", 5*time.Millisecond)
	// On a loaded machine the unpublish may itself outlast the budget while
	// it waits for the running attach: retry it as a CO does.
	err = e.be.Unpublish(ctx, v.ID, node)
	for i := 0; err != nil && csierr.Code(err) == codes.Aborted && i < 20; i++ {
		err = e.be.Unpublish(ctx, v.ID, node)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cloud.WaitIdle(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID)); len(got.Attachments) != 0 {
		t.Fatalf("attached after unpublish: %+v", got.Attachments)
	}
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// A volume attached to another server outside the driver is not taken.
func TestPublishAttachedElsewhere(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("elsewhere")))
	vid := must[int64](t)(strconv.ParseInt(v.ID, 10, 64))
	a, _, err := e.api.Volume.Attach(ctx, &hcloud.Volume{ID: vid}, &hcloud.Server{ID: e.servers[1].ID})
	if err != nil {
		t.Fatal(err)
	}
	// Before the attach finishes, the volume shows no server yet; the
	// publish waits for the running attach and then refuses.
	_, err = e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])})
	wantCode(t, err, codes.FailedPrecondition)
	if err := e.api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(err.Error(), sid(e.servers[1])) {
		t.Errorf("the error does not name the server holding it: %v", err)
	}
	// DeleteVolume detaches first.
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// A volume this backend created is deleted without a look-up; when the
// API refuses that delete with another code than volume_already_attached
// (it has answered an attached volume with service_error), DeleteVolume
// still looks the volume up, detaches it and deletes it.
func TestDeleteOwnedAttachedVolumeOtherRefusal(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("refused")))
	if _, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])}); err != nil {
		t.Fatal(err)
	}
	e.cloud.Inject(fakecloud.Fault{Method: "DELETE", Path: "/volumes/*", Status: http.StatusUnprocessableEntity,
		Code: "service_error", Message: "volume with ID '" + v.ID + "' is still attached to a server"})
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	e.checkClean(t)
}

// A server takes 16 volumes; the 17th answers ResourceExhausted.
func TestPublishAttachLimit(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	node := sid(e.servers[0])
	var ids []string
	for i := range MaxVolumesPerServer + 1 {
		v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec(fmt.Sprintf("v%d", i))))
		ids = append(ids, v.ID)
		_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: node})
		if i < MaxVolumesPerServer && err != nil {
			t.Fatal(err)
		}
		if i == MaxVolumesPerServer {
			wantCode(t, err, codes.ResourceExhausted)
		}
	}
	for _, id := range ids {
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}

func TestExpandVolume(t *testing.T) {
	e := newEnv(t, false, withWait(150*time.Millisecond))
	ctx := context.Background()
	v := e.createRetrying(t, ctx, "grow")
	if size := must[int64](t)(e.be.ExpandVolume(ctx, v.ID, 14*backend.GiB+backend.GiB/2)); size != 15*backend.GiB {
		t.Fatalf("expanded to %d, want 15 GiB", size)
	}
	if size := must[int64](t)(e.be.ExpandVolume(ctx, v.ID, 12*backend.GiB)); size != 15*backend.GiB { // no shrinking
		t.Fatalf("expand to less gave %d", size)
	}
	_, err := e.be.ExpandVolume(ctx, v.ID, MaxSize+1)
	wantCode(t, err, codes.OutOfRange)
	e.cloud.SetActionDelay("resize_volume", 400*time.Millisecond)
	_, err = e.be.ExpandVolume(ctx, v.ID, 20*backend.GiB)
	wantCode(t, err, codes.Aborted)
	for range 20 {
		if _, err = e.be.ExpandVolume(ctx, v.ID, 20*backend.GiB); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := len(e.cloud.Actions("resize_volume")); n != 2 {
		t.Fatalf("%d resize actions, want 2 (15 GiB, then 20 GiB once)", n)
	}
	if got := must[*backend.Volume](t)(e.be.Volume(ctx, v.ID)); got.CapacityBytes != 20*backend.GiB {
		t.Fatalf("size %d", got.CapacityBytes)
	}
}

func TestErrorsMapToCodes(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("errors")))

	// A 429 whose Retry-After fits in the call's time is waited out; a
	// longer one answers Unavailable at once with the wait the API asked
	// for, and the retries the client would make are not sent before it.
	limited := e.backend(t)
	e.cloud.Inject(fakecloud.Fault{Path: "/volumes/*", Status: http.StatusTooManyRequests, RetryAfter: time.Second})
	e.cloud.ResetRequests()
	if _, err := limited.Volume(ctx, v.ID); err != nil {
		t.Fatalf("a 429 with Retry-After 1s was not waited out: %v", err)
	}
	if n := e.cloud.Requests().Total; n != 2 {
		t.Errorf("%d requests for a read after one 429, want 2", n)
	}
	e.cloud.Inject(fakecloud.Fault{Path: "/volumes/*", Status: http.StatusTooManyRequests, RetryAfter: 7 * time.Second, Times: 3})
	e.cloud.ResetRequests()
	_, err := limited.Volume(ctx, v.ID)
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), "retry after 7s") {
		t.Errorf("429 without the wait: %v", err)
	}
	_, err = limited.Volume(ctx, v.ID)
	wantCode(t, err, codes.Unavailable)
	if n := e.cloud.Requests().Total; n != 1 {
		t.Errorf("%d requests for two calls while the API asked to wait 7s, want 1", n)
	}
	e.cloud.ClearFaults()
	reader := e.backend(t) // reads v: it did not create it
	for status, code := range map[int]codes.Code{
		http.StatusInternalServerError: codes.Unavailable,
		http.StatusServiceUnavailable:  codes.Unavailable,
	} {
		e.cloud.Inject(fakecloud.Fault{Path: "/volumes/*", Status: status})
		_, err := reader.Volume(ctx, v.ID)
		wantCode(t, err, code)
	}
	e.cloud.Inject(fakecloud.Fault{Path: "/volumes/*", Status: http.StatusForbidden, Code: "forbidden", Message: "token is read-only"})
	err = e.be.DeleteVolume(ctx, v.ID)
	wantCode(t, err, codes.PermissionDenied)

	wrong := e.backend(t, withToken("wrong-token-value"))
	_, err = wrong.Volume(ctx, v.ID)
	wantCode(t, err, codes.Unauthenticated)
	if strings.Contains(err.Error(), "wrong-token-value") || strings.Contains(err.Error(), testToken) {
		t.Errorf("the error contains a token: %v", err)
	}

	// Nothing listens: Unavailable, naming the API.
	down := newEnv(t, false)
	down.cloud.Close()
	_, err = down.be.ListVolumes(ctx)
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("unreachable API: %v", err)
	}

	// Delete protection is the user's to lift.
	vid := must[int64](t)(strconv.ParseInt(v.ID, 10, 64))
	a, _, err := e.api.Volume.ChangeProtection(ctx, &hcloud.Volume{ID: vid}, hcloud.VolumeChangeProtectionOpts{Delete: hcloud.Ptr(true)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	err = e.be.DeleteVolume(ctx, v.ID)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "protection") {
		t.Errorf("protected: %v", err)
	}
}

// The token comes from the request's secret when there is one.
func TestTokenFromSecret(t *testing.T) {
	e := newEnv(t, false)
	noToken := e.backend(t, withToken(""))
	ctx := context.Background()
	_, err := noToken.ListVolumes(ctx)
	wantCode(t, err, codes.Unauthenticated)
	withSecret := backend.WithSecrets(ctx, map[string]string{SecretToken: testToken})
	v, err := noToken.CreateVolume(withSecret, spec("secret"))
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret := backend.WithSecrets(ctx, map[string]string{SecretToken: "not-the-token"})
	_, err = e.be.Volume(wrongSecret, v.ID) // the secret wins over the configured token
	wantCode(t, err, codes.Unauthenticated)
	if err := noToken.DeleteVolume(withSecret, v.ID); err != nil {
		t.Fatal(err)
	}
}

func TestNodeKnown(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	for id, want := range map[string]bool{sid(e.servers[0]): true, sid(e.far): true, "4711": false, "node-1": false, "": false, "01001": false} {
		if got, err := e.be.NodeKnown(ctx, id); err != nil || got != want {
			t.Errorf("NodeKnown(%q) = %v, %v; want %v", id, got, err, want)
		}
	}
	e.cloud.ResetRequests()
	for range 3 {
		if known, err := e.be.NodeKnown(ctx, sid(e.servers[0])); err != nil || !known {
			t.Fatal(known, err)
		}
	}
	if n := e.cloud.Requests().Total; n != 0 {
		t.Errorf("a known server was asked for again: %d requests", n)
	}
}

func TestCondition(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("health")))
	if c := e.be.Condition(ctx, v); c.Abnormal {
		t.Fatalf("condition %+v", c)
	}
	if err := e.be.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if c := e.be.Condition(ctx, v); !c.Abnormal || !strings.Contains(c.Message, "gone") {
		t.Fatalf("condition of a deleted volume %+v", c)
	}
}

func TestNodeWithoutDevices(t *testing.T) {
	e := newEnv(t, false, withWait(200*time.Millisecond))
	ctx := context.Background()
	n := e.node(t, 0)
	if err := n.Register(ctx, sid(e.servers[0])); err != nil {
		t.Fatal(err)
	}
	wantCode(t, n.Register(ctx, sid(e.servers[1])), codes.InvalidArgument)
	wantCode(t, n.Register(ctx, "node-1"), codes.InvalidArgument)
	if err := n.Health(ctx); err != nil {
		t.Fatal(err)
	}
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("node")))
	_, err := n.Attach(ctx, v, nil)
	wantCode(t, err, codes.FailedPrecondition) // not published to this server
	if dev, err := n.Device(ctx, v.ID); dev != "" || err != nil {
		t.Fatalf("Device of an unattached volume: %q, %v", dev, err)
	}
	// The wait is short for the missing device below: under load the
	// attach may outlast it, and Aborted asks for the retry Swarm makes.
	for i := 0; ; i++ {
		_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])})
		if err == nil {
			break
		}
		if csierr.Code(err) != codes.Aborted || i == 50 {
			t.Fatal(err)
		}
	}
	// Without root the by-id link leads to the image file, not a device.
	v = must[*backend.Volume](t)(n.Volume(ctx, v.ID))
	_, err = n.Attach(ctx, v, nil)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "not a block device") {
		t.Errorf("Attach to a non-device: %v", err)
	}
	// Attached, but the device never shows up (udev missing): Unavailable
	// after the wait, naming the link.
	link := filepath.Join(e.servers[0].DeviceDir, DevicePrefix+v.ID)
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	_, err = n.Attach(ctx, v, nil)
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), link) {
		t.Errorf("missing device: %v", err)
	}
	for _, id := range []string{"abc", "../x", "0"} {
		if dev, err := n.Device(ctx, id); dev != "" || err != nil {
			t.Errorf("Device(%q) = %q, %v", id, dev, err)
		}
		if err := n.Detach(ctx, id); err != nil {
			t.Errorf("Detach(%q): %v", id, err)
		}
	}
	_, err = n.Attach(ctx, &backend.Volume{ID: "../x"}, nil)
	wantCode(t, err, codes.NotFound)
	if _, err := e.be.ForNode(0, "/dev/disk/by-id"); err == nil {
		t.Error("ForNode accepted server 0")
	}
	if _, err := e.be.ForNode(1, "dev/disk"); err == nil {
		t.Error("ForNode accepted a relative device directory")
	}
	missing, _ := e.be.ForNode(1, filepath.Join(t.TempDir(), "none"))
	if err := missing.Health(ctx); err == nil {
		t.Error("Health without a device directory")
	}
}

func TestFromMetadata(t *testing.T) {
	e := newEnv(t, false)
	info, err := FromMetadata(context.Background(), e.far.MetadataURL, time.Second)
	if err != nil || info.ID != e.far.ID || info.Location != "hel1" {
		t.Fatalf("FromMetadata = %+v, %v", info, err)
	}
	if _, err := FromMetadata(context.Background(), e.cloud.MetadataURL(1), time.Second); err == nil {
		t.Fatal("metadata of no server answered")
	}
}

// Volumes attached to one server, published and unpublished at once: the
// server is locked by one action at a time, so most calls meet "locked"
// and wait. Each call must answer only once its own attach or detach is
// done.
func TestConcurrentCallsOnOneServer(t *testing.T) {
	e := newEnv(t, false, withWait(5*time.Second))
	ctx := context.Background()
	e.cloud.SetActionDelay("", 60*time.Millisecond)
	node := sid(e.servers[0])
	var ids []string
	for i := range 4 {
		ids = append(ids, must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec(fmt.Sprintf("c%d", i)))).ID)
	}
	check := func(attached bool) {
		t.Helper()
		errs := make(chan error, len(ids))
		for _, id := range ids {
			go func() {
				var err error
				if attached {
					_, err = e.be.Publish(ctx, &backend.Volume{ID: id}, backend.Attachment{NodeID: node})
				} else {
					err = e.be.Unpublish(ctx, id, node)
				}
				if err == nil {
					vid := must[int64](t)(strconv.ParseInt(id, 10, 64))
					hv, _, gerr := e.api.Volume.GetByID(ctx, vid)
					if gerr != nil || (hv.Server != nil) != attached {
						err = fmt.Errorf("volume %s answered, but attached is %t (%v)", id, hv.Server != nil, gerr)
					}
				}
				errs <- err
			}()
		}
		for range ids {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	}
	e.cloud.ResetRequests()
	check(true)
	check(false)
	// The calls took turns at the server in the process: none was sent
	// only to be refused as locked.
	reqs := e.cloud.Requests().ByRoute
	if reqs["POST /volumes/{id}/actions/attach"] != len(ids) || reqs["POST /volumes/{id}/actions/detach"] != len(ids) {
		t.Errorf("%d attach and %d detach requests for %d volumes", reqs["POST /volumes/{id}/actions/attach"], reqs["POST /volumes/{id}/actions/detach"], len(ids))
	}
	for _, id := range ids {
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}

// Waits learn how long actions take: once they have seen a few, a wait
// polls an action about once, where a fixed backoff from 100 ms would poll
// a 400 ms action three times.
func TestWaitsLearnActionDurations(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	e.cloud.SetActionDelay("", 400*time.Millisecond)
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("paced")))
	node := sid(e.servers[0])
	cycle := func() {
		t.Helper()
		if _, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: node}); err != nil {
			t.Fatal(err)
		}
		if err := e.be.Unpublish(ctx, v.ID, node); err != nil {
			t.Fatal(err)
		}
	}
	cycle() // learns
	e.cloud.ResetRequests()
	const cycles = 3
	for range cycles {
		cycle()
	}
	polls := e.cloud.Requests().ByRoute["GET /actions"]
	if polls > 2*2*cycles {
		t.Errorf("%d polls for %d actions, want at most 2 each", polls, 2*cycles)
	}
	t.Logf("%d polls for %d actions", polls, 2*cycles)
}

// A creation that outlasts the budget and then fails in the cloud: the
// retry, which finds the volume still in the making, must not report it
// as created, and the next one creates a volume that exists.
func TestCreateVolumeResumesAndSurvivesFailedCreation(t *testing.T) {
	e := newEnv(t, false, withWait(100*time.Millisecond))
	ctx := context.Background()
	e.cloud.SetActionDelay("create_volume", 400*time.Millisecond)
	_, err := e.be.CreateVolume(ctx, spec("unlucky"))
	wantCode(t, err, codes.Aborted)
	e.cloud.FailActions("create_volume", "action_failed", "injected", 1) // the running one fails
	e.cloud.SetActionDelay("create_volume", 5*time.Millisecond)
	patient := e.backend(t, withWait(5*time.Second)) // a retry with time to wait
	_, err = patient.CreateVolume(ctx, spec("unlucky"))
	wantCode(t, err, codes.Aborted)
	if !strings.Contains(err.Error(), "creation failed") {
		t.Errorf("the retry does not say the creation failed: %v", err)
	}
	v := must[*backend.Volume](t)(patient.CreateVolume(ctx, spec("unlucky")))
	vols := e.cloud.Volumes()
	if len(vols) != 1 || strconv.FormatInt(vols[0].ID, 10) != v.ID || vols[0].Status != "available" {
		t.Fatalf("created %s; the cloud has %+v", v.ID, vols)
	}
	if n := len(e.cloud.Actions("create_volume")); n != 2 {
		t.Errorf("%d create actions, want 2 (the failed one and the new one)", n)
	}
}
