package ops

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// volume stats: what every node that has the volume published sees of it.
// This node answers through its plugin's socket; the others through their
// plugin's metrics endpoint (the series Prometheus scrapes), at the
// address each has in the swarm and the port of METRICS_ADDR.

type usage struct {
	Unit      string `json:"unit"`
	Total     int64  `json:"total"`
	Used      int64  `json:"used"`
	Available int64  `json:"available"`
}

// nodeStats is one node's view of a volume; Error says why the node could
// not be asked.
type nodeStats struct {
	Node      string  `json:"node"`
	Hostname  string  `json:"hostname,omitempty"`
	State     string  `json:"state"` // Swarm's publish state
	From      string  `json:"from"`  // "plugin socket" or the metrics URL
	Usage     []usage `json:"usage,omitempty"`
	Abnormal  bool    `json:"abnormal"`
	Condition string  `json:"condition,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// scrapeTimeout bounds the wait for one node's metrics.
const scrapeTimeout = 5 * time.Second

// scrapeClient goes to the nodes directly, whatever HTTP_PROXY says: they
// are the swarm's own addresses.
var scrapeClient = &http.Client{Transport: &http.Transport{}}

func (o *op) volumeStats(ctx context.Context, name string) error {
	v, id, err := o.swarmVolume(ctx, name)
	if err != nil {
		return err
	}
	pubs := v.ClusterVolume.PublishStatus
	if len(pubs) == 0 {
		return fmt.Errorf("volume %s is not published on any node: nothing mounts it (volume inspect %s shows its size)", name, name)
	}
	sort.Slice(pubs, func(i, j int) bool { return pubs[i].NodeID < pubs[j].NodeID })
	here, _ := o.engine.ThisNode(ctx)
	port, portErr := o.metricsPort(ctx)
	out := struct {
		Name     string      `json:"name"`
		VolumeID string      `json:"volume_id"`
		Nodes    []nodeStats `json:"nodes"`
	}{Name: name, VolumeID: id}
	failed := 0
	for _, p := range pubs {
		ns := nodeStats{Node: p.NodeID, State: string(p.State)}
		n, nodeErr := o.engine.Node(ctx, p.NodeID)
		ns.Hostname = n.Description.Hostname
		switch {
		case p.NodeID == here:
			o.localStats(ctx, v, id, &ns)
		case nodeErr != nil:
			ns.Error = fmt.Sprintf("node %s: %v", p.NodeID, nodeErr)
		case portErr != nil:
			ns.Error = portErr.Error()
		default:
			remoteStats(ctx, "http://"+net.JoinHostPort(nodeAddr(n), port)+"/metrics", id, &ns)
		}
		if ns.Error != "" {
			failed++
		}
		out.Nodes = append(out.Nodes, ns)
	}
	if err := o.print(out, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "NODE\tHOSTNAME\tUNIT\tTOTAL\tUSED\tAVAILABLE\tCONDITION")
		for _, ns := range out.Nodes {
			cond := "normal"
			switch {
			case ns.Error != "":
				cond = "unknown"
			case ns.Abnormal:
				cond = "ABNORMAL: " + ns.Condition
			}
			if len(ns.Usage) == 0 {
				fmt.Fprintf(w, "%s\t%s\t-\t-\t-\t-\t%s\n", ns.Node, ns.Hostname, cond)
			}
			for _, u := range ns.Usage {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", ns.Node, ns.Hostname, u.Unit, u.Total, u.Used, u.Available, cond)
			}
		}
		for _, ns := range out.Nodes {
			if ns.Error != "" {
				fmt.Fprintf(w, "node %s: %s\n", ns.Node, ns.Error)
			}
		}
	}); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("volume %s: %d of the %d nodes it is published on could not be asked", name, failed, len(out.Nodes))
	}
	return nil
}

// localStats asks this node's plugin, through its socket.
func (o *op) localStats(ctx context.Context, v *volume.Volume, id string, ns *nodeStats) {
	ns.From = "plugin socket"
	path := publishedPath(v)
	h, err := o.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: path})
	if err != nil {
		ns.Error = fmt.Sprintf("the plugin's NodeGetVolumeHealth: %v", err)
		return
	}
	if ns.Abnormal, ns.Condition = healthProblem(h.GetVolumeHealth()); ns.Abnormal {
		return
	}
	r, err := o.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		ns.Error = fmt.Sprintf("the plugin's NodeGetVolumeStats: %v", err)
		return
	}
	for _, u := range r.GetUsage() {
		unit := strings.ToLower(strings.TrimPrefix(u.GetUnit().String(), "UNKNOWN"))
		ns.Usage = append(ns.Usage, usage{Unit: unit, Total: u.GetTotal(), Used: u.GetUsed(), Available: u.GetAvailable()})
	}
}

// metricsPort is the port of the plugin's METRICS_ADDR on this node, which
// the plugins of the other nodes are taken to share.
func (o *op) metricsPort(ctx context.Context) (string, error) {
	p, err := o.pluginInspect(ctx)
	if err != nil {
		return "", err
	}
	addr := ""
	for _, e := range p.Settings.Env {
		if v, ok := strings.CutPrefix(e, "METRICS_ADDR="); ok {
			addr = v
		}
	}
	if addr == "" {
		return "", fmt.Errorf("other nodes answer through their plugin's metrics, which are off (METRICS_ADDR is empty): "+
			"docker plugin set %s METRICS_ADDR=:9464 on every node, or run volume stats on that node", o.plugin)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return "", fmt.Errorf("METRICS_ADDR %q of plugin %s: no port the other nodes can be asked at", addr, o.plugin)
	}
	return port, nil
}

// nodeAddr is the address a node has in the swarm (a manager may show
// 0.0.0.0 there: then its manager address).
func nodeAddr(n swarm.Node) string {
	addr := n.Status.Addr
	if (addr == "" || addr == "0.0.0.0") && n.ManagerStatus != nil {
		if h, _, err := net.SplitHostPort(n.ManagerStatus.Addr); err == nil {
			addr = h
		}
	}
	return addr
}

// remoteStats reads what a node's plugin exports of volume id at url.
func remoteStats(ctx context.Context, url, id string, ns *nodeStats) {
	ns.From = url
	fams, err := scrapeMetrics(ctx, url)
	if err != nil {
		ns.Error = fmt.Sprintf("%v (its plugin must serve metrics on an address this node reaches: METRICS_ADDR=:PORT)", err)
		return
	}
	values := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels[metrics.LabelVolumeID] != id {
				continue
			}
			if name == metrics.VolumeAbnormal && m.GetGauge().GetValue() == 1 {
				ns.Abnormal, ns.Condition = true, labels[metrics.LabelReason]
			}
			values[name] = m.GetGauge().GetValue()
		}
	}
	if _, ok := values[metrics.VolumeAbnormal]; !ok {
		ns.Abnormal, ns.Condition = true, "NotMounted: the node's plugin has no mount of it"
	}
	if ns.Abnormal {
		return
	}
	val := func(name string) int64 { return int64(values[name]) }
	ns.Usage = append(ns.Usage, usage{Unit: "bytes", Total: val(metrics.VolumeCapacityBytes),
		Used: val(metrics.VolumeUsedBytes), Available: val(metrics.VolumeAvailableBytes)})
	if _, ok := values[metrics.VolumeInodes]; ok {
		total, used := val(metrics.VolumeInodes), val(metrics.VolumeInodesUsed)
		ns.Usage = append(ns.Usage, usage{Unit: "inodes", Total: total, Used: used, Available: total - used})
	}
}

// maxScrape bounds what is read of one node's metrics.
const maxScrape = 64 << 20

func scrapeMetrics(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, maxScrape))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return fams, nil
}
