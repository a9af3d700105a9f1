// Package metrics holds the driver's Prometheus metrics: its CSI calls,
// the calls its backends make (loop tools, rbd commands, cloud API
// requests), and, through collectors registered by the driver, its
// volumes. They are served with --metrics-addr.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds every metric of the driver.
var Registry = prometheus.NewRegistry()

var (
	rpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "swarm_csi_rpc_requests_total",
		Help: "CSI calls served, by method and gRPC code.",
	}, []string{"method", "code"})
	rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "swarm_csi_rpc_duration_seconds",
		Help:    "Time to serve a CSI call, by method.",
		Buckets: []float64{.001, .005, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30},
	}, []string{"method"})
	rpcInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "swarm_csi_rpc_in_flight",
		Help: "CSI calls being served, by method.",
	}, []string{"method"})
	backendCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "swarm_csi_backend_call_duration_seconds",
		Help:    "Calls the driver makes: tools it runs (mkfs, rbd ...) and cloud API requests, by backend, call and outcome.",
		Buckets: []float64{.005, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"backend", "call", "status"})
	apiBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "swarm_csi_api_budget_remaining",
		Help: "Requests left in a cloud API's rate-limit budget, as its last answer said, by backend.",
	}, []string{"backend"})
	apiRateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "swarm_csi_api_rate_limited_total",
		Help: "Cloud API requests held back because the rate-limit budget was low, by backend and outcome: waited (sent once it refilled) or refused (not sent; the call answered Unavailable).",
	}, []string{"backend", "outcome"})
)

func init() {
	Registry.MustRegister(rpcRequests, rpcDuration, rpcInFlight, backendCalls, apiBudget, apiRateLimited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// RPCStarted counts a CSI call in flight; the function it returns ends
// it with its gRPC code.
func RPCStarted(method string) func(code string) {
	start := time.Now()
	g := rpcInFlight.WithLabelValues(method)
	g.Inc()
	return func(code string) {
		g.Dec()
		rpcRequests.WithLabelValues(method, code).Inc()
		rpcDuration.WithLabelValues(method).Observe(time.Since(start).Seconds())
	}
}

// BackendCall records a call the driver made: backend ("loop", "rbd",
// "hcloud", "node"), what it was (a tool and subcommand, or a method and
// route), its outcome ("ok", an error kind, an HTTP status) and duration.
func BackendCall(backend, call, status string, d time.Duration) {
	backendCalls.WithLabelValues(backend, call, status).Observe(d.Seconds())
}

// RateLimitRemaining records the requests left in a cloud API's budget.
func RateLimitRemaining(backend string, n int) { apiBudget.WithLabelValues(backend).Set(float64(n)) }

// RateLimited counts a request held back by a low budget: outcome
// "waited" or "refused".
func RateLimited(backend, outcome string) { apiRateLimited.WithLabelValues(backend, outcome).Inc() }

// Observe records a backend call that began at start and ended with err
// (status "ok" or "error").
func Observe(backend, call string, start time.Time, err error) {
	status := "ok"
	if err != nil {
		status = "error"
	}
	BackendCall(backend, call, status, time.Since(start))
}

// Serve serves /metrics on addr until ctx ends. The listener is made at
// once, so a bad address fails the start.
func Serve(ctx context.Context, addr string) (net.Addr, <-chan error, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(Registry, promhttp.HandlerOpts{Registry: Registry}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(lis)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return lis.Addr(), done, nil
}

// idPattern matches path segments that are ids, so that routes stay few.
var idPattern = regexp.MustCompile(`^[0-9]+$`)

// Route is an API path with its numeric ids replaced by {id}.
func Route(path string) string {
	out := []byte{}
	seg := []byte{}
	flush := func() {
		if idPattern.Match(seg) {
			out = append(out, "{id}"...)
		} else {
			out = append(out, seg...)
		}
		seg = seg[:0]
	}
	for i := 0; i < len(path); i++ {
		if path[i] == '/' {
			flush()
			out = append(out, '/')
			continue
		}
		seg = append(seg, path[i])
	}
	flush()
	return string(out)
}

// Transport wraps an HTTP transport to record each request as a backend
// call, by method and route.
type Transport struct {
	Backend string
	Base    http.RoundTripper
	// Strip is a path prefix to leave out of routes (the API's /v1).
	Strip string
}

func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	start := time.Now()
	resp, err := base.RoundTrip(r)
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	path := r.URL.Path
	if len(path) >= len(t.Strip) && path[:len(t.Strip)] == t.Strip {
		path = path[len(t.Strip):]
	}
	BackendCall(t.Backend, r.Method+" "+Route(path), status, time.Since(start))
	return resp, err
}

// Usage is a volume published on this node: the size and use of its
// filesystem (a block volume has only its size), or the reason it is
// abnormal (NotMounted, DeviceDetached...: then no sizes).
type Usage struct {
	VolumeID                 string
	CapacityBytes, UsedBytes int64
	AvailableBytes           int64 // to an unprivileged writer
	Inodes, InodesUsed       int64
	Block                    bool
	Abnormal                 string
}

// scrapeTimeout bounds what a collector asks the backend at a scrape.
const scrapeTimeout = 5 * time.Second

// The series of each volume published on a node, and their labels: what
// `swarm-csi volume stats` reads from the other nodes.
const (
	VolumeCapacityBytes  = "swarm_csi_volume_capacity_bytes"
	VolumeUsedBytes      = "swarm_csi_volume_used_bytes"
	VolumeAvailableBytes = "swarm_csi_volume_available_bytes"
	VolumeInodes         = "swarm_csi_volume_inodes"
	VolumeInodesUsed     = "swarm_csi_volume_inodes_used"
	VolumeAbnormal       = "swarm_csi_volume_abnormal"

	LabelVolumeID = "volume_id"
	LabelReason   = "reason" // of VolumeAbnormal
)

var (
	volumesDesc      = prometheus.NewDesc("swarm_csi_volumes", "Volumes the backend holds, by state (published to a node or not); on a node serving the controller.", []string{"state"}, nil)
	capacityDesc     = prometheus.NewDesc(VolumeCapacityBytes, "Size of the filesystem (or block device) of a volume published on this node.", []string{LabelVolumeID}, nil)
	usedDesc         = prometheus.NewDesc(VolumeUsedBytes, "Bytes used in the filesystem of a volume mounted on this node.", []string{LabelVolumeID}, nil)
	availableDesc    = prometheus.NewDesc(VolumeAvailableBytes, "Bytes an unprivileged writer can still use in the filesystem of a volume published on this node.", []string{LabelVolumeID}, nil)
	inodesDesc       = prometheus.NewDesc(VolumeInodes, "Inodes of the filesystem of a volume mounted on this node.", []string{LabelVolumeID}, nil)
	inodesUsedDesc   = prometheus.NewDesc(VolumeInodesUsed, "Inodes used in the filesystem of a volume mounted on this node.", []string{LabelVolumeID}, nil)
	abnormalDesc     = prometheus.NewDesc(VolumeAbnormal, "1 when a volume published on this node has lost its mount or device (reason says which), else 0.", []string{LabelVolumeID, LabelReason}, nil)
	scrapeErrorsDesc = prometheus.NewDesc("swarm_csi_scrape_errors", "1 when the last scrape could not ask the backend or the node state (then the volume series are missing).", []string{"source"}, nil)
)

// VolumeCollector collects the controller's volume counts (counts, may be
// nil) and the node's mounted volumes (usage, may be nil) at each scrape.
type VolumeCollector struct {
	Counts func(ctx context.Context) (map[string]int, error)
	Usage  func(ctx context.Context) ([]Usage, error)
}

func (c *VolumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{volumesDesc, capacityDesc, usedDesc, availableDesc, inodesDesc, inodesUsedDesc, abnormalDesc, scrapeErrorsDesc} {
		ch <- d
	}
}

func (c *VolumeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	failed := func(source string, err error) {
		v := 0.0
		if err != nil {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(scrapeErrorsDesc, prometheus.GaugeValue, v, source)
	}
	if c.Counts != nil {
		counts, err := c.Counts(ctx)
		failed("controller", err)
		for state, n := range counts {
			ch <- prometheus.MustNewConstMetric(volumesDesc, prometheus.GaugeValue, float64(n), state)
		}
	}
	if c.Usage != nil {
		us, err := c.Usage(ctx)
		failed("node", err)
		for _, u := range us {
			if u.Abnormal != "" {
				ch <- prometheus.MustNewConstMetric(abnormalDesc, prometheus.GaugeValue, 1, u.VolumeID, u.Abnormal)
				continue
			}
			ch <- prometheus.MustNewConstMetric(abnormalDesc, prometheus.GaugeValue, 0, u.VolumeID, "")
			ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(u.CapacityBytes), u.VolumeID)
			if u.Block {
				continue
			}
			ch <- prometheus.MustNewConstMetric(usedDesc, prometheus.GaugeValue, float64(u.UsedBytes), u.VolumeID)
			ch <- prometheus.MustNewConstMetric(availableDesc, prometheus.GaugeValue, float64(u.AvailableBytes), u.VolumeID)
			ch <- prometheus.MustNewConstMetric(inodesDesc, prometheus.GaugeValue, float64(u.Inodes), u.VolumeID)
			ch <- prometheus.MustNewConstMetric(inodesUsedDesc, prometheus.GaugeValue, float64(u.InodesUsed), u.VolumeID)
		}
	}
}
