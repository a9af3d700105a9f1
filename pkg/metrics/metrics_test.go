package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestRoute(t *testing.T) {
	for in, want := range map[string]string{
		"/volumes/123/actions/attach": "/volumes/{id}/actions/attach",
		"/volumes":                    "/volumes",
		"/actions/9":                  "/actions/{id}",
		"/servers/web-1":              "/servers/web-1",
	} {
		if got := Route(in); got != want {
			t.Errorf("Route(%q) = %q, want %q", in, got, want)
		}
	}
}

// The endpoint serves the CSI calls, the backend calls (here through the
// HTTP transport) and the volume collectors' series, which move.
func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/9") {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer api.Close()
	used := int64(100)
	countsErr := error(nil)
	Registry.MustRegister(&VolumeCollector{
		Counts: func(context.Context) (map[string]int, error) {
			return map[string]int{"published": 2, "unpublished": 1}, countsErr
		},
		Usage: func(context.Context) ([]Usage, error) {
			return []Usage{{VolumeID: "vol-1", CapacityBytes: 1000, UsedBytes: used, Inodes: 10, InodesUsed: 3},
				{VolumeID: "vol-2", Abnormal: "NotMounted"}, {VolumeID: "vol-3", Block: true, CapacityBytes: 4096}}, nil
		},
	})
	addr, done, err := Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + addr.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	end := RPCStarted("/csi.v1.Node/NodeStageVolume")
	if m := scrape(); !strings.Contains(m, `swarm_csi_rpc_in_flight{method="/csi.v1.Node/NodeStageVolume"} 1`) {
		t.Errorf("no call in flight:\n%s", grep(m, "in_flight"))
	}
	end("OK")
	BackendCall("rbd", "rbd create", "ok", 30*time.Millisecond)
	RateLimitRemaining("hcloud", 42)
	RateLimited("hcloud", "waited")
	RateLimited("hcloud", "waited")
	c := &http.Client{Transport: &Transport{Backend: "hcloud", Strip: "/v1"}}
	for _, p := range []string{"/v1/volumes/9", "/v1/volumes"} {
		resp, err := c.Get(api.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	m := scrape()
	for _, want := range []string{
		`swarm_csi_rpc_requests_total{code="OK",method="/csi.v1.Node/NodeStageVolume"} 1`,
		`swarm_csi_rpc_in_flight{method="/csi.v1.Node/NodeStageVolume"} 0`,
		`swarm_csi_rpc_duration_seconds_count{method="/csi.v1.Node/NodeStageVolume"} 1`,
		`swarm_csi_backend_call_duration_seconds_count{backend="rbd",call="rbd create",status="ok"} 1`,
		`swarm_csi_backend_call_duration_seconds_count{backend="hcloud",call="GET /volumes/{id}",status="429"} 1`,
		`swarm_csi_backend_call_duration_seconds_count{backend="hcloud",call="GET /volumes",status="200"} 1`,
		`swarm_csi_api_budget_remaining{backend="hcloud"} 42`,
		`swarm_csi_api_rate_limited_total{backend="hcloud",outcome="waited"} 2`,
		`swarm_csi_volumes{state="published"} 2`,
		`swarm_csi_volume_used_bytes{volume_id="vol-1"} 100`,
		`swarm_csi_volume_inodes_used{volume_id="vol-1"} 3`,
		`swarm_csi_scrape_errors{source="controller"} 0`,
		`swarm_csi_volume_abnormal{reason="",volume_id="vol-1"} 0`,
		`swarm_csi_volume_abnormal{reason="NotMounted",volume_id="vol-2"} 1`,
		`swarm_csi_volume_capacity_bytes{volume_id="vol-3"} 4096`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	for _, not := range []string{`volume_id="vol-2"`, `swarm_csi_volume_used_bytes{volume_id="vol-3"}`} {
		if strings.Contains(strings.ReplaceAll(m, `swarm_csi_volume_abnormal{reason="NotMounted",volume_id="vol-2"}`, ""), not) {
			t.Errorf("scrape has %s:\n%s", not, grep(m, "swarm_csi_volume"))
		}
	}
	used, countsErr = 400, errors.New("backend down")
	m = scrape()
	if !strings.Contains(m, `swarm_csi_volume_used_bytes{volume_id="vol-1"} 400`) || !strings.Contains(m, `swarm_csi_scrape_errors{source="controller"} 1`) {
		t.Errorf("the series did not move:\n%s", grep(m, "swarm_csi_volume"))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, err := Serve(context.Background(), "not an address"); err == nil {
		t.Error("a bad address served")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
