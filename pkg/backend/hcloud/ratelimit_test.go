package hcloud

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// With a low budget that refills quickly, 50 lifecycles in a row complete
// without a single 429: the driver paces its requests by the budget the
// API reports, and sends no more than it allows. The lifecycles ask for
// about 450 requests; the budget holds 60 and refills 40 a second, slower
// than even a loaded machine sends them, so the budget always runs low.
func TestRateLimitPaced(t *testing.T) {
	const budget, refill = 60, 25 * time.Millisecond
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: t.TempDir(), Token: testToken, ActionDelay: 5 * time.Millisecond,
		NoDevices: true, EnforceRateLimit: true, RateLimit: budget, RateRefill: refill})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cloud.Close() })
	server, err := cloud.AddServer("node-1", "fsn1")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cloud: cloud, endpoint: cloud.URL(), servers: []fakecloud.Server{server}}
	var log bytes.Buffer
	e.be = e.backend(t, withLog(&log))
	ctrl := controller.New(e.be, MaxVolumesPerServer)
	n := e.node(t, 0)
	start := time.Now()
	requests := 0
	for i := range 50 {
		requests += e.lifecycle(t, ctrl, n, fmt.Sprint("paced-", i), true).total()
	}
	elapsed := time.Since(start)
	allowed := budget + int(elapsed/refill) + 1
	if limited := cloud.Requests().Limited; limited > 0 || requests > allowed {
		t.Errorf("%d requests in %s, %d of them answered 429; the budget allows %d", requests, elapsed.Round(time.Millisecond), limited, allowed)
	}
	if requests < budget {
		t.Fatalf("only %d requests: the budget was never short", requests)
	}
	if c := strings.Count(log.String(), "budget low"); c != 1 {
		t.Errorf("the low budget was logged %d times, want once:\n%s", c, log.String())
	}
	t.Logf("%d requests in %s (%.1f per lifecycle)", requests, elapsed.Round(time.Millisecond), float64(requests)/50)
}

// With the budget spent and slow to refill, a call that cannot wait for it
// answers Unavailable at once, saying when to retry, and sends nothing.
func TestRateLimitRefusesWithoutAsking(t *testing.T) {
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: t.TempDir(), Token: testToken, NoDevices: true,
		EnforceRateLimit: true, RateLimit: 6, RateRefill: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cloud.Close() })
	e := &env{cloud: cloud, endpoint: cloud.URL()}
	var log bytes.Buffer
	be := e.backend(t, withLog(&log), withWait(300*time.Millisecond))
	ctx := context.Background()
	for range 6 { // what the budget holds
		_, err := be.Volume(ctx, "12345")
		wantCode(t, err, codes.NotFound)
	}
	sent := cloud.Requests().Total
	for range 3 {
		_, err := be.Volume(ctx, "12345")
		wantCode(t, err, codes.Unavailable)
		if !strings.Contains(err.Error(), "retry after") {
			t.Errorf("no wait named: %v", err)
		}
	}
	if r := cloud.Requests(); r.Total != sent || r.Limited != 0 {
		t.Errorf("requests %+v after the budget ran low, want still %d and none answered 429", r, sent)
	}
	if c := strings.Count(log.String(), "budget low"); c != 1 {
		t.Errorf("the low budget was logged %d times, want once:\n%s", c, log.String())
	}
}

func withLog(w *bytes.Buffer) option {
	return func(c *Config) { c.Log = slog.New(slog.NewTextHandler(w, nil)) }
}
