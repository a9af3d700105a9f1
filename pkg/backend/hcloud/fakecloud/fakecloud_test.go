package fakecloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/hetznercloud/hcloud-go/v2/hcloud/metadata"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
)

const token = "fake-token-0123456789"

// start runs a fake cloud for a test, with devices only if asked for.
func start(t *testing.T, devices bool) (*Cloud, *hcloud.Client) {
	t.Helper()
	c, err := Start(Options{Dir: t.TempDir(), Token: token, NoDevices: !devices})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c, client(c, token)
}

func client(c *Cloud, token string) *hcloud.Client {
	return hcloud.NewClient(hcloud.WithToken(token), hcloud.WithEndpoint(c.URL()),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(5 * time.Millisecond)}),
		hcloud.WithRetryOpts(hcloud.RetryOpts{MaxRetries: 0}))
}

func createVolume(t *testing.T, api *hcloud.Client, name string, labels map[string]string) *hcloud.Volume {
	t.Helper()
	ctx := context.Background()
	res, _, err := api.Volume.Create(ctx, hcloud.VolumeCreateOpts{Name: name, Size: 10, Location: &hcloud.Location{Name: "fsn1"}, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	if res.Volume.Status != hcloud.VolumeStatusCreating || res.Action.Command != "create_volume" {
		t.Fatalf("create answered %+v, action %+v", res.Volume, res.Action)
	}
	if err := api.Action.WaitFor(ctx, res.Action); err != nil {
		t.Fatal(err)
	}
	v, _, err := api.Volume.GetByID(ctx, res.Volume.ID)
	if err != nil || v.Status != hcloud.VolumeStatusAvailable {
		t.Fatalf("after creation: %+v, %v", v, err)
	}
	return v
}

func wantCode(t *testing.T, err error, code hcloud.ErrorCode) {
	t.Helper()
	if !hcloud.IsError(err, code) {
		t.Fatalf("got %v, want API error %s", err, code)
	}
}

func TestVolumesThroughTheClient(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	s, err := c.AddServer("node-1", "fsn1")
	if err != nil {
		t.Fatal(err)
	}
	v := createVolume(t, api, "data", map[string]string{"swarm-csi/cluster": "a", "app": "db"})
	if v.Size != 10 || v.Location.Name != "fsn1" || v.LinuxDevice != "/dev/disk/by-id/scsi-0HC_Volume_"+strconv.FormatInt(v.ID, 10) {
		t.Errorf("volume %+v", v)
	}

	// Names are unique in the project.
	_, _, err = api.Volume.Create(ctx, hcloud.VolumeCreateOpts{Name: "data", Size: 10, Location: &hcloud.Location{Name: "fsn1"}})
	wantCode(t, err, hcloud.ErrorCodeUniquenessError)
	for _, bad := range []hcloud.VolumeCreateOpts{
		{Name: "small", Size: 9, Location: &hcloud.Location{Name: "fsn1"}},
		{Name: "big", Size: MaxVolumeGiB + 1, Location: &hcloud.Location{Name: "fsn1"}},
		{Name: "nowhere", Size: 10, Location: &hcloud.Location{Name: "mars1"}},
		{Name: "bad/name", Size: 10, Location: &hcloud.Location{Name: "fsn1"}},
		{Name: "labels", Size: 10, Location: &hcloud.Location{Name: "fsn1"}, Labels: map[string]string{"k": "-bad-"}},
		{Name: "reserved", Size: 10, Location: &hcloud.Location{Name: "fsn1"}, Labels: map[string]string{"hetzner.cloud/x": "y"}},
	} {
		_, _, err := api.Volume.Create(ctx, bad)
		wantCode(t, err, hcloud.ErrorCodeInvalidInput)
	}

	// Attach: an action that locks the volume and the server meanwhile.
	c.SetActionDelay("attach_volume", 200*time.Millisecond)
	a, _, err := api.Volume.Attach(ctx, v, &hcloud.Server{ID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != hcloud.ActionStatusRunning || len(a.Resources) != 2 {
		t.Fatalf("attach action %+v", a)
	}
	_, _, err = api.Volume.Detach(ctx, v)
	wantCode(t, err, hcloud.ErrorCodeLocked)
	other := createVolume(t, api, "other", nil)
	_, _, err = api.Volume.Attach(ctx, other, &hcloud.Server{ID: s.ID})
	wantCode(t, err, hcloud.ErrorCodeLocked) // the server is locked too
	running, err := api.Volume.Action.AllFor(ctx, v, hcloud.ActionListOpts{Status: []hcloud.ActionStatus{hcloud.ActionStatusRunning}})
	if err != nil || len(running) != 1 || running[0].ID != a.ID {
		t.Fatalf("running actions of the volume: %v, %v", running, err)
	}
	if err := api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	v, _, _ = api.Volume.GetByID(ctx, v.ID)
	if v.Server == nil || v.Server.ID != s.ID {
		t.Fatalf("after attach: server %+v", v.Server)
	}
	srv, _, err := api.Server.GetByID(ctx, s.ID)
	if err != nil || len(srv.Volumes) != 1 || srv.Volumes[0].ID != v.ID {
		t.Fatalf("server after attach: %+v, %v", srv, err)
	}
	link := filepath.Join(s.DeviceDir, DevicePrefix+strconv.FormatInt(v.ID, 10))
	if _, err := os.Stat(link); err != nil {
		t.Errorf("no by-id link: %v", err)
	}
	_, _, err = api.Volume.Attach(ctx, v, &hcloud.Server{ID: s.ID})
	wantCode(t, err, hcloud.ErrorCodeVolumeAlreadyAttached)
	_, err = api.Volume.Delete(ctx, v)
	wantCode(t, err, hcloud.ErrorCodeVolumeAlreadyAttached)

	// Resize, then detach and delete.
	a, _, err = api.Volume.Resize(ctx, v, 12)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	_, _, err = api.Volume.Resize(ctx, v, 12)
	wantCode(t, err, hcloud.ErrorCodeInvalidInput) // volumes do not shrink or stay
	a, _, err = api.Volume.Detach(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("by-id link left after detach: %v", err)
	}
	if _, err := api.Volume.Delete(ctx, v); err != nil {
		t.Fatal(err)
	}
	if got, _, err := api.Volume.GetByID(ctx, v.ID); got != nil || err != nil {
		t.Fatalf("deleted volume still there: %+v, %v", got, err)
	}
	if _, err := api.Volume.Delete(ctx, other); err != nil {
		t.Fatal(err)
	}
	if left := c.Leftovers(); len(left) > 0 {
		t.Errorf("leftovers: %v", left)
	}
}

func TestListPaginationAndSelectors(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	for i := range 60 {
		cluster := "a"
		if i%3 == 0 {
			cluster = "b"
		}
		res, _, err := api.Volume.Create(ctx, hcloud.VolumeCreateOpts{Name: fmt.Sprintf("v%02d", i), Size: 10,
			Location: &hcloud.Location{Name: "fsn1"}, Labels: map[string]string{"cluster": cluster, "n": strconv.Itoa(i)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := api.Action.WaitFor(ctx, res.Action); err != nil {
			t.Fatal(err)
		}
	}
	c.ResetRequests()
	all, err := api.Volume.AllWithOpts(ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{PerPage: 25}})
	if err != nil || len(all) != 60 {
		t.Fatalf("all volumes: %d, %v", len(all), err)
	}
	if got := c.Requests().ByRoute["GET /volumes"]; got != 3 {
		t.Errorf("60 volumes at 25 a page took %d requests, want 3", got)
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].ID >= all[i].ID {
			t.Fatalf("not sorted by id: %d before %d", all[i-1].ID, all[i].ID)
		}
	}
	desc, _, err := api.Volume.List(ctx, hcloud.VolumeListOpts{Sort: []string{"id:desc"}, ListOpts: hcloud.ListOpts{PerPage: 2}})
	if err != nil || len(desc) != 2 || desc[0].ID != all[59].ID {
		t.Fatalf("sorted descending: %v, %v", desc, err)
	}

	for sel, want := range map[string]int{
		"cluster=a":              40,
		"cluster==b":             20,
		"cluster!=b":             40,
		"cluster":                60,
		"!cluster":               0,
		"cluster in (a,b)":       60,
		"cluster notin (a)":      20,
		"cluster=a,n in (1,2,3)": 2,
		"n=7,cluster=b":          0,
		"absent!=x":              60,
	} {
		got, err := api.Volume.AllWithOpts(ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{LabelSelector: sel}})
		if err != nil || len(got) != want {
			t.Errorf("label_selector %q: %d volumes, %v; want %d", sel, len(got), err, want)
		}
	}
	for _, bad := range []string{"a=b=c", "x in a,b)", "k)", ",", "-bad-=1", "in (a)", "k notin"} {
		_, _, err := api.Volume.List(ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{LabelSelector: bad}})
		wantCode(t, err, hcloud.ErrorCodeInvalidInput)
	}
	byName, _, err := api.Volume.GetByName(ctx, "v07")
	if err != nil || byName == nil || byName.Labels["n"] != "7" {
		t.Fatalf("by name: %+v, %v", byName, err)
	}
	_, _, err = api.Volume.List(ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{PerPage: 51}})
	wantCode(t, err, hcloud.ErrorCodeInvalidInput)
}

func TestAuthAndUnknownRoutes(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	_, err := client(c, "wrong").Volume.All(ctx)
	wantCode(t, err, hcloud.ErrorCodeUnauthorized)
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error repeats the token: %v", err)
	}
	if v, _, err := api.Volume.GetByID(ctx, 4711); v != nil || err != nil {
		t.Errorf("unknown volume: %v, %v", v, err)
	}
	if s, _, err := api.Server.GetByID(ctx, 4711); s != nil || err != nil {
		t.Errorf("unknown server: %v, %v", s, err)
	}
	_, err = api.Action.AllWithOpts(ctx, hcloud.ActionListOpts{})
	wantCode(t, err, hcloud.ErrorCodeInvalidInput) // ids are required
	resp, err := http.Get(c.URL() + "/volumes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("RateLimit-Limit") != "3600" {
		t.Errorf("without a token: %s, RateLimit-Limit %q", resp.Status, resp.Header.Get("RateLimit-Limit"))
	}
	locs, err := api.Location.All(ctx)
	if err != nil || len(locs) != 6 || locs[0].Name != "fsn1" || locs[0].NetworkZone != "eu-central" {
		t.Fatalf("locations: %v, %v", locs, err)
	}
}

func TestFaults(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	c.Inject(Fault{Method: "GET", Path: "/volumes", Status: http.StatusTooManyRequests, RetryAfter: 7 * time.Second, Times: 2})
	_, resp, err := api.Volume.List(ctx, hcloud.VolumeListOpts{})
	wantCode(t, err, hcloud.ErrorCodeRateLimitExceeded)
	if resp.Header.Get("Retry-After") != "7" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Errorf("429 headers: Retry-After %q, RateLimit-Remaining %q", resp.Header.Get("Retry-After"), resp.Header.Get("RateLimit-Remaining"))
	}
	_, _, err = api.Volume.List(ctx, hcloud.VolumeListOpts{})
	wantCode(t, err, hcloud.ErrorCodeRateLimitExceeded)
	if _, _, err = api.Volume.List(ctx, hcloud.VolumeListOpts{}); err != nil {
		t.Fatalf("after the fault is used up: %v", err)
	}

	// A fault after the effect: the volume exists, the answer is lost.
	c.Inject(Fault{Method: "POST", Path: "/volumes", Status: http.StatusServiceUnavailable, After: true})
	_, _, err = api.Volume.Create(ctx, hcloud.VolumeCreateOpts{Name: "lost", Size: 10, Location: &hcloud.Location{Name: "fsn1"}})
	wantCode(t, err, "unavailable")
	if vols := c.Volumes(); len(vols) != 1 || vols[0].Name != "lost" {
		t.Fatalf("volumes after a lost answer: %+v", vols)
	}
	c.Inject(Fault{Path: "/volumes/*", Status: http.StatusInternalServerError})
	_, _, err = api.Volume.GetByID(ctx, c.Volumes()[0].ID)
	wantCode(t, err, hcloud.ErrorCodeServerError)

	// A failing action has no effect; a failed creation leaves no volume.
	c.FailActions("create_volume", "action_failed", "no luck", 1)
	res, _, err := api.Volume.Create(ctx, hcloud.VolumeCreateOpts{Name: "unlucky", Size: 10, Location: &hcloud.Location{Name: "fsn1"}})
	if err != nil {
		t.Fatal(err)
	}
	err = api.Action.WaitFor(ctx, res.Action)
	var ae hcloud.ActionError
	if !errors.As(err, &ae) || ae.Code != "action_failed" {
		t.Fatalf("failed action: %v", err)
	}
	if v, _, err := api.Volume.GetByID(ctx, res.Volume.ID); v != nil || err != nil {
		t.Fatalf("a failed creation left %+v, %v", v, err)
	}
}

func TestRateLimitEnforced(t *testing.T) {
	c, err := Start(Options{Dir: t.TempDir(), Token: token, NoDevices: true, EnforceRateLimit: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.mu.Lock()
	c.rate.tokens = 2 // as if the hour's budget were nearly spent
	c.mu.Unlock()
	api := client(c, token)
	for i := range 2 {
		if _, err := api.Location.All(context.Background()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, resp, err := api.Location.List(context.Background(), hcloud.LocationListOpts{})
	wantCode(t, err, hcloud.ErrorCodeRateLimitExceeded)
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
}

// A low budget that refills quickly: spent after 3 requests, refilled
// one request per 100 ms; the 429s are counted.
func TestRateLimitSetLow(t *testing.T) {
	c, err := Start(Options{Dir: t.TempDir(), Token: token, NoDevices: true, EnforceRateLimit: true,
		RateLimit: 3, RateRefill: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	api := hcloud.NewClient(hcloud.WithToken(token), hcloud.WithEndpoint(c.URL()), hcloud.WithRetryOpts(hcloud.RetryOpts{MaxRetries: 0}))
	ctx := context.Background()
	for i := range 3 {
		_, resp, err := api.Location.List(ctx, hcloud.LocationListOpts{})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resp.Header.Get("RateLimit-Limit") != "3" || resp.Header.Get("RateLimit-Remaining") != strconv.Itoa(2-i) {
			t.Errorf("request %d: RateLimit-Limit %q, RateLimit-Remaining %q", i, resp.Header.Get("RateLimit-Limit"), resp.Header.Get("RateLimit-Remaining"))
		}
	}
	_, resp, err := api.Location.List(ctx, hcloud.LocationListOpts{})
	wantCode(t, err, hcloud.ErrorCodeRateLimitExceeded)
	if resp.Header.Get("Retry-After") != "1" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Errorf("429: Retry-After %q, RateLimit-Remaining %q", resp.Header.Get("Retry-After"), resp.Header.Get("RateLimit-Remaining"))
	}
	time.Sleep(150 * time.Millisecond)
	if _, _, err := api.Location.List(ctx, hcloud.LocationListOpts{}); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
	if r := c.Requests(); r.Total != 5 || r.Limited != 1 {
		t.Errorf("requests %+v, want 5 with 1 limited", r)
	}
}

// Volumes added in bulk are listed like the others and removed at once.
func TestAddVolumes(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	ids, err := c.AddVolumes(60, "fsn1", map[string]string{"app": "bulk"})
	if err != nil || len(ids) != 60 {
		t.Fatalf("AddVolumes: %d, %v", len(ids), err)
	}
	vols, err := api.Volume.AllWithOpts(ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{LabelSelector: "app=bulk"}})
	if err != nil || len(vols) != 60 || vols[0].Status != hcloud.VolumeStatusAvailable {
		t.Fatalf("listed %d, %v", len(vols), err)
	}
	if _, err := c.AddVolumes(1, "nowhere", nil); err == nil {
		t.Error("AddVolumes in no location")
	}
	c.RemoveVolumes(ids)
	if left := c.Volumes(); len(left) != 0 {
		t.Fatalf("%d volumes left", len(left))
	}
}

func TestAttachLimitAndLocation(t *testing.T) {
	c, api := start(t, false)
	ctx := context.Background()
	s, _ := c.AddServer("node-1", "fsn1")
	far, _ := c.AddServer("node-far", "hel1")
	var last *hcloud.Volume
	for i := range MaxVolumesPerServer + 1 {
		v := createVolume(t, api, fmt.Sprintf("v%d", i), nil)
		if i == MaxVolumesPerServer {
			last = v
			break
		}
		a, _, err := api.Volume.Attach(ctx, v, &hcloud.Server{ID: s.ID})
		if err != nil {
			t.Fatal(err)
		}
		if err := api.Action.WaitFor(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := api.Volume.Attach(ctx, last, &hcloud.Server{ID: s.ID})
	wantCode(t, err, "limit_exceeded_error")
	_, _, err = api.Volume.Attach(ctx, last, &hcloud.Server{ID: far.ID})
	wantCode(t, err, hcloud.ErrorCodeInvalidInput)
	_, _, err = api.Volume.Attach(ctx, last, &hcloud.Server{ID: 1})
	wantCode(t, err, hcloud.ErrorCodeInvalidInput)
}

func TestMetadata(t *testing.T) {
	c, _ := start(t, false)
	s, err := c.AddServer("worker-1", "nbg1")
	if err != nil {
		t.Fatal(err)
	}
	md := metadata.NewClient(metadata.WithEndpoint(s.MetadataURL))
	ctx := context.Background()
	if id, err := md.InstanceIDWithContext(ctx); err != nil || id != s.ID {
		t.Errorf("instance-id %d, %v; want %d", id, err, s.ID)
	}
	if zone, err := md.AvailabilityZoneWithContext(ctx); err != nil || zone != "nbg1-dc3" {
		t.Errorf("availability-zone %q, %v", zone, err)
	}
	if name, err := md.HostnameWithContext(ctx); err != nil || name != "worker-1" {
		t.Errorf("hostname %q, %v", name, err)
	}
	resp, err := http.Get(c.MetadataURL(999999) + "/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("metadata of no server: %s %q", resp.Status, body)
	}
	if _, err := c.AddServer("worker-1", "nbg1"); err == nil {
		t.Error("a second server of the same name was added")
	}
	if _, err := c.AddServer("worker-2", "mars1"); err == nil {
		t.Error("a server in no location was added")
	}
}

// With root, an attached volume is a loop device on its image that sees
// resizes at once; detach and Close leave nothing behind.
func TestDevices(t *testing.T) {
	testenv.RequireRoot(t)
	c, api := start(t, true)
	ctx := context.Background()
	s, _ := c.AddServer("node-1", "fsn1")
	v := createVolume(t, api, "dev", nil)
	a, _, err := api.Volume.Attach(ctx, v, &hcloud.Server{ID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(s.DeviceDir, DevicePrefix+strconv.FormatInt(v.ID, 10))
	dev, err := filepath.EvalSymlinks(link)
	if err != nil || !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("by-id link leads to %q, %v", dev, err)
	}
	if size, err := blockdev.Size(dev); err != nil || size != 10<<30 {
		t.Fatalf("device size %d, %v", size, err)
	}
	a, _, err = api.Volume.Resize(ctx, v, 11)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Action.WaitFor(ctx, a); err != nil {
		t.Fatal(err)
	}
	if size, err := blockdev.Size(dev); err != nil || size != 11<<30 {
		t.Fatalf("device size after resize %d, %v", size, err)
	}
	if left := c.Leftovers(); len(left) > 0 {
		t.Errorf("leftovers while attached: %v", left)
	}
	// Close detaches what is still attached.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err == nil {
		t.Errorf("link %s survived Close", link)
	}
	if loops := loopDevicesUnder(c.Dir()); len(loops) > 0 {
		t.Errorf("loop devices survived Close: %v", loops)
	}
}

// A fake that was killed leaves loop devices; the next one on the same
// directory removes them.
func TestStartSweepsLeftovers(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	c, err := Start(Options{Dir: dir, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	api := client(c, token)
	s, _ := c.AddServer("node-1", "fsn1")
	v := createVolume(t, api, "orphan", nil)
	a, _, err := api.Volume.Attach(context.Background(), v, &hcloud.Server{ID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Action.WaitFor(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	// Stop serving without the cleanup of Close, as a killed fake would.
	c.srv.Close()
	if len(loopDevicesUnder(c.Dir())) != 1 {
		t.Fatal("no loop device to leave behind")
	}
	c2, err := Start(Options{Dir: dir, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if loops := loopDevicesUnder(c2.Dir()); len(loops) > 0 {
		t.Errorf("loop devices of the earlier fake remain: %v", loops)
	}
}
