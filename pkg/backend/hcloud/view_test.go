package hcloud

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// clock is a settable clock for the views.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// An hour of metrics scrapes every 15 s, with 1,000 volumes of the cluster
// in the project, costs a few listings, not one per scrape: at most 5% of
// the hourly budget of 3600 requests. The counts follow what this process
// does at once, and what is done outside it once the listing is made
// again.
func TestScrapesListRarely(t *testing.T) {
	e := newEnv(t, false, withWait(time.Minute)) // listing 1,000 volumes under -race is slow
	ctx := context.Background()
	clk := &clock{t: time.Now()}
	e.be.now = clk.now
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	labels := map[string]string{LabelCluster: "test", LabelName: nameHash("other"), labelFs: "ext4", labelAccessMode: "SINGLE_NODE_WRITER"}
	others, err := e.cloud.AddVolumes(1000, "fsn1", labels)
	if err != nil {
		t.Fatal(err)
	}
	scrape := func(want map[string]int) {
		t.Helper()
		got, err := ctrl.VolumeCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want != nil && !maps.Equal(got, want) {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}

	e.cloud.ResetRequests()
	scrape(map[string]int{"published": 0, "unpublished": 1000})
	if n := e.cloud.Requests().Total; n != 20 {
		t.Errorf("the first scrape made %d requests, want the listing's 20", n)
	}

	// This process's own changes show at the next scrape, unlisted.
	r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "mine", VolumeCapabilities: []*csi.VolumeCapability{writer}})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	e.cloud.ResetRequests()
	scrape(map[string]int{"published": 0, "unpublished": 1001})
	if _, err := ctrl.ControllerPublishVolume(ctx, publishReq(id, e.servers[0])); err != nil {
		t.Fatal(err)
	}
	scrape(map[string]int{"published": 1, "unpublished": 1000})
	if _, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: sid(e.servers[0])}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	scrape(map[string]int{"published": 0, "unpublished": 1000})
	// The lifecycle's own requests, and no listing.
	if n := e.cloud.Requests().ByRoute["GET /volumes"]; n != 0 {
		t.Errorf("%d listings for scrapes right after one", n)
	}

	// A change made outside this process shows once the listing is made
	// again; an hour of scrapes makes it a few times.
	e.cloud.RemoveVolumes(others[:500])
	e.cloud.ResetRequests()
	for range 3600 / 15 {
		clk.add(15 * time.Second)
		scrape(nil)
	}
	scrape(map[string]int{"published": 0, "unpublished": 500})
	n := e.cloud.Requests().Total
	if n > 3600/20 || n < 10 {
		t.Errorf("an hour of scrapes made %d requests, want some, and at most 5%% of the budget (180)", n)
	}
	t.Logf("an hour of scrapes every 15 s: %d requests", n)

	// Volume asks the API, for a listed volume too.
	e.cloud.ResetRequests()
	for range 2 {
		if _, err := e.be.Volume(ctx, strconv.FormatInt(others[600], 10)); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.cloud.Requests().Total; n != 2 {
		t.Errorf("%d requests for two looks at a listed volume, want 2", n)
	}
	e.cloud.RemoveVolumes(others[500:])
	e.checkClean(t)
}

// afterList runs a function once, after the API answered the first page
// of a listing and before the caller sees it.
type afterList struct {
	base http.RoundTripper
	once sync.Once
	do   func()
}

func (a *afterList) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := a.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/volumes") {
		a.once.Do(a.do)
	}
	return resp, err
}

// A volume this process creates or deletes while a listing is under way
// is as this process left it, not as the older listing has it; the
// deleted one leaves nothing behind in memory.
func TestListingKeepsChangesMadeMeanwhile(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	hook := &afterList{base: http.DefaultTransport}
	be := e.backend(t, func(c *Config) { c.HTTPClient = &http.Client{Transport: hook} })
	deleted := must[*backend.Volume](t)(be.CreateVolume(ctx, spec("deleted")))
	kept := must[*backend.Volume](t)(be.CreateVolume(ctx, spec("kept")))
	var created *backend.Volume
	hook.do = func() {
		if err := be.DeleteVolume(ctx, deleted.ID); err != nil {
			t.Error(err)
		}
		created = must[*backend.Volume](t)(be.CreateVolume(ctx, spec("created")))
	}
	for range 2 { // the listing, then what is kept of it
		var ids []string
		for _, v := range must[[]*backend.Volume](t)(be.ListVolumes(ctx)) {
			ids = append(ids, v.ID)
		}
		if want := []string{kept.ID, created.ID}; !slices.Equal(ids, want) {
			t.Fatalf("listed %v, want %v", ids, want)
		}
	}
	be.mu.Lock()
	n := 0
	for _, v := range be.views {
		n += len(v.vols)
	}
	be.mu.Unlock()
	if n != 2 {
		t.Errorf("%d volumes remembered, want the 2 that exist", n)
	}
	for _, v := range []*backend.Volume{kept, created} {
		if err := be.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}
