package ops

import (
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/moby/moby/api/types/swarm"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// Another node's view of a volume comes from the series its plugin
// exports: sizes while healthy, the reason when abnormal, "not mounted"
// when the node has no such volume, an error when it cannot be asked.
func TestRemoteStats(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&metrics.VolumeCollector{Usage: func(context.Context) ([]metrics.Usage, error) {
		return []metrics.Usage{
			{VolumeID: "vol-fs", CapacityBytes: 2 << 30, UsedBytes: 5 << 20, AvailableBytes: 1<<30 + 7, Inodes: 1000, InodesUsed: 12},
			{VolumeID: "vol-blk", Block: true, CapacityBytes: 1 << 30},
			{VolumeID: "vol-bad", Abnormal: "NotMounted"},
		}, nil
	}})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	url := srv.URL + "/metrics"
	ctx := context.Background()
	for id, want := range map[string]nodeStats{
		"vol-fs":   {Usage: []usage{{"bytes", 2 << 30, 5 << 20, 1<<30 + 7}, {"inodes", 1000, 12, 988}}},
		"vol-blk":  {Usage: []usage{{"bytes", 1 << 30, 0, 0}}},
		"vol-bad":  {Abnormal: true, Condition: "NotMounted"},
		"vol-none": {Abnormal: true, Condition: "NotMounted: the node's plugin has no mount of it"},
	} {
		var got nodeStats
		remoteStats(ctx, url, id, &got)
		want.From = url
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", id, got, want)
		}
	}

	var got nodeStats
	remoteStats(ctx, srv.URL+"/nope", "vol-fs", &got)
	if got.Error == "" || got.Usage != nil {
		t.Errorf("a 404 answer: %+v", got)
	}
	srv.Close()
	got = nodeStats{}
	remoteStats(ctx, url, "vol-fs", &got)
	if got.Error == "" {
		t.Errorf("nobody listening: %+v", got)
	}
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("{not metrics")) }))
	defer garbage.Close()
	got = nodeStats{}
	remoteStats(ctx, garbage.URL, "vol-fs", &got)
	if got.Error == "" {
		t.Errorf("not the exposition format: %+v", got)
	}
}

func TestNodeAddr(t *testing.T) {
	worker := swarm.Node{Status: swarm.NodeStatus{Addr: "10.0.0.3"}}
	manager := swarm.Node{Status: swarm.NodeStatus{Addr: "0.0.0.0"}, ManagerStatus: &swarm.ManagerStatus{Addr: "10.0.0.1:2377"}}
	v6 := swarm.Node{Status: swarm.NodeStatus{Addr: "fd00::2"}}
	for n, want := range map[*swarm.Node]string{&worker: "10.0.0.3", &manager: "10.0.0.1", &v6: "fd00::2"} {
		if got := nodeAddr(*n); got != want {
			t.Errorf("nodeAddr(%+v) = %q, want %q", n.Status, got, want)
		}
	}
}
