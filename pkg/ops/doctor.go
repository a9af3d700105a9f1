package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// doctor: what Swarm does not say about the plugin and its volumes, run on
// a manager. Each finding says what is wrong and the command that fixes
// it; a warning is worth knowing but breaks nothing.

// Finding levels.
const (
	levelFail = "FAIL"
	levelWarn = "WARN"
)

// finding is one line of doctor.
type finding struct {
	Level   string `json:"level"`   // FAIL or WARN
	Check   string `json:"check"`   // engine, plugin, volume, orphan, snapshot, capabilities, metrics
	Subject string `json:"subject"` // a node's host name, a volume's name or id, the plugin
	Problem string `json:"problem"`
	Fix     string `json:"fix,omitempty"`
}

type doctorReport struct {
	OK       bool      `json:"ok"`
	Checked  []string  `json:"checked"` // what was looked at, for the record
	Findings []finding `json:"findings"`
}

// doctor runs the checks and returns the exit status: 0 nothing failed,
// 1 something did, 2 bad usage.
func (c *CLI) doctor(ctx context.Context, args []string) int {
	if len(args) > 0 || (c.Format != "" && c.Format != "table" && c.Format != "json") {
		fmt.Fprintln(c.Stderr, "usage: swarm-csi [--plugin NAME] [--socket PATH] [--format table|json] doctor")
		return 2
	}
	engine, err := c.Engine()
	if err != nil {
		fmt.Fprintln(c.Stderr, "swarm-csi:", err)
		return 1
	}
	defer engine.Close()
	o := &op{plugin: cmp.Or(c.Plugin, "swarm-csi:latest"), json: c.Format == "json", out: c.Stdout, engine: engine}
	d := &doctorRun{op: o}
	if err := d.run(ctx, c.Socket, c.PluginsDir); err != nil {
		fmt.Fprintln(c.Stderr, "swarm-csi:", err)
		return 1
	}
	if err := d.write(); err != nil {
		fmt.Fprintln(c.Stderr, "swarm-csi:", err)
		return 1
	}
	if !d.report.OK {
		return 1
	}
	return 0
}

// doctorRun is doctor under way.
type doctorRun struct {
	*op
	report doctorReport
	here   string                // this node's Swarm id
	nodes  map[string]swarm.Node // by Swarm id
	leader string                // its host name
	vols   []volume.Volume       // the plugin's Swarm volumes
	held   *holders
	// The ids of the backend's volumes (ListVolumes); nil if it could not
	// be asked.
	backend map[string]bool
}

func (d *doctorRun) add(level, check, subject, problem, fix string) {
	d.report.Findings = append(d.report.Findings, finding{level, check, subject, problem, fix})
}

func (d *doctorRun) checked(what string) { d.report.Checked = append(d.report.Checked, what) }

// run makes the checks. It fails only when the Engine cannot be asked at
// all; everything else is a finding.
func (d *doctorRun) run(ctx context.Context, socket, pluginsDir string) error {
	nodes, err := d.engine.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("docker node ls: %w (doctor runs on a manager)", err)
	}
	d.here, _ = d.engine.ThisNode(ctx)
	d.nodes = map[string]swarm.Node{}
	for _, n := range nodes {
		d.nodes[n.ID] = n
		if n.ManagerStatus != nil && n.ManagerStatus.Leader {
			d.leader = n.Description.Hostname
		}
	}
	d.checkEngines(nodes)
	p, perr := d.pluginInspect(ctx)
	d.checkPlugin(nodes, p, perr)
	if p != nil {
		d.checkCapabilities()
	}
	d.held = d.newHolders(ctx)
	d.checkMetrics(ctx, nodes)
	if d.vols, err = d.engine.Volumes(ctx, d.plugin); err != nil {
		return fmt.Errorf("docker volume ls: %w", err)
	}
	if (perr == nil && p.Enabled) || socket != "" {
		conn, err := d.connect(ctx, socket, pluginsDir)
		if err != nil {
			return err
		}
		defer conn.Close()
		d.checkBackend(ctx)
		d.checkPending(ctx, controller.FetchCreateErrors)
		d.checkSnapshots(ctx)
	} else {
		d.checkPending(ctx, nil)
	}
	d.checkPublished(ctx)
	d.report.OK = !slices.ContainsFunc(d.report.Findings, func(f finding) bool { return f.Level == levelFail })
	return nil
}

// Engine versions (docs/swarm.md, "Engine versions"): cluster volumes
// came with 23.0; the managers of 26.0 to 28.1 lose the plugin's address,
// 28.2 (minEngine) keeps it.
var (
	minEngine     = [2]int{28, 2}
	firstVolumes  = [2]int{23, 0}
	firstBrokenAt = [2]int{26, 0}
)

// engineVersion reads "28.2.2" (or "v28.2.2", "28.2.2-rc.1") as {28, 2}.
func engineVersion(s string) ([2]int, bool) {
	parts := strings.SplitN(strings.TrimPrefix(s, "v"), ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	major, err1 := strconv.Atoi(parts[0])
	digits := strings.IndexFunc(parts[1]+"-", func(r rune) bool { return r < '0' || r > '9' })
	minor, err2 := strconv.Atoi(parts[1][:digits])
	if err1 != nil || err2 != nil {
		return [2]int{}, false
	}
	return [2]int{major, minor}, true
}

func less(a, b [2]int) bool { return a[0] < b[0] || (a[0] == b[0] && a[1] < b[1]) }

func (d *doctorRun) checkEngines(nodes []swarm.Node) {
	d.checked(fmt.Sprintf("the Engine version of %d node(s)", len(nodes)))
	for _, n := range nodes {
		host, ver := n.Description.Hostname, n.Description.Engine.EngineVersion
		isManager := n.Spec.Role == swarm.NodeRoleManager
		v, ok := engineVersion(ver)
		switch {
		case !ok:
			d.add(levelWarn, "engine", host, fmt.Sprintf("Engine version %q cannot be read; cluster volumes need 28.2 or later on managers", ver), "")
		case less(v, firstVolumes):
			d.add(levelFail, "engine", host, fmt.Sprintf("Engine %s has no cluster volumes (they came with 23.0)", ver),
				"upgrade Docker Engine on "+host+" to 28.2 or later")
		case isManager && !less(v, firstBrokenAt) && less(v, minEngine):
			d.add(levelFail, "engine", host, fmt.Sprintf("Engine %s on a manager loses the plugin's address: new volumes stay pending creation for ever", ver),
				"upgrade Docker Engine on "+host+" to 28.2 or later")
		}
		if n.Status.State != swarm.NodeStateReady {
			d.add(levelWarn, "engine", host, strings.TrimSuffix(fmt.Sprintf("node is %s: %s", n.Status.State, n.Status.Message), ": "),
				fmt.Sprintf("start Docker on %s; if it is gone for good: docker node rm --force %s", host, n.ID))
		}
	}
}

// checkPlugin: the plugin here, and on every node as docker node inspect
// shows it: its name among the Engine's plugins and its CSI node id.
func (d *doctorRun) checkPlugin(nodes []swarm.Node, p *plugin.Plugin, err error) {
	d.checked("the plugin " + d.plugin + " here and in docker node inspect of every node")
	switch {
	case err != nil:
		d.add(levelFail, "plugin", d.plugin, fmt.Sprintf("not installed on this node: %v", err),
			"docker plugin install it under the name "+d.plugin+" on every node (README, \"Run it on a swarm\")")
	case !p.Enabled:
		d.add(levelFail, "plugin", d.plugin, "disabled on this node", "docker plugin enable "+d.plugin)
	}
	for _, n := range nodes {
		if n.Status.State != swarm.NodeStateReady {
			continue // its own warning says so
		}
		host := n.Description.Hostname
		has := slices.ContainsFunc(n.Description.Engine.Plugins, func(pd swarm.PluginDescription) bool { return pd.Name == d.plugin })
		csiID := csiNodeID(n, d.plugin)
		switch {
		case !has && csiID == "":
			d.add(levelFail, "plugin", host, "the plugin "+d.plugin+" is not installed or not enabled there (under this name and tag)",
				fmt.Sprintf("on %s: docker plugin install (or enable) %s, then restart Docker there so that Swarm learns its CSI node id", host, d.plugin))
		case csiID == "":
			d.add(levelFail, "plugin", host, "no CSI node id for "+d.plugin+" in docker node inspect: the plugin was enabled after the node joined, and Swarm publishes nothing there",
				"restart Docker on "+host+" (systemctl restart docker)")
		}
	}
}

// csiNodeID is the node id the plugin gave Swarm on node n, or "".
func csiNodeID(n swarm.Node, plugin string) string {
	for _, c := range n.Description.CSIInfo {
		if c.PluginName == plugin {
			return c.NodeID
		}
	}
	return ""
}

func (d *doctorRun) checkCapabilities() {
	d.checked("the plugin's capabilities")
	caps := d.installed.Config.Linux.Capabilities
	if !slices.Contains(caps, "CAP_SYS_ADMIN") {
		d.add(levelFail, "capabilities", d.plugin, "the plugin lacks CAP_SYS_ADMIN: it cannot mount volumes",
			"install the plugin from deploy/ (deploy/build-plugin), which asks for it")
	}
	if !slices.Contains(caps, "CAP_SYS_RESOURCE") {
		d.add(levelWarn, "capabilities", d.plugin, "the plugin lacks CAP_SYS_RESOURCE: an ext4 volume in use grows only at its next mount (xfs grows online)",
			"build the plugin where the bounding set has CAP_SYS_RESOURCE (deploy/build-plugin) and install it again")
	}
}

// checkMetrics: with METRICS_ADDR set, every node's plugin answers there
// (volume stats and the checks below ask them); without it, a warning.
func (d *doctorRun) checkMetrics(ctx context.Context, nodes []swarm.Node) {
	if d.held.portErr != nil {
		if d.installed != nil {
			d.add(levelWarn, "metrics", d.plugin, "METRICS_ADDR is not set: the plugins of other nodes cannot be asked what they hold",
				"on every node: docker plugin disable "+d.plugin+"; docker plugin set "+d.plugin+" METRICS_ADDR=:9464; docker plugin enable "+d.plugin)
		}
		return
	}
	d.checked("the metrics endpoint and the settings of every node's plugin")
	ref := d.held.scrape(ctx, d.nodes[d.here]).settings
	for _, n := range nodes {
		if n.Status.State != swarm.NodeStateReady {
			continue
		}
		sc := d.held.scrape(ctx, n)
		host := n.Description.Hostname
		switch {
		case sc.err != nil:
			d.add(levelFail, "metrics", host, sc.err.Error(),
				"check that the plugin on "+host+" is enabled with METRICS_ADDR=:"+d.held.port+" and that this manager reaches it")
		case ref != nil && sc.settings != nil:
			d.compareSettings(host, ref, sc.settings)
		}
	}
}

// compareSettings: what must be the same on every node's plugin.
func (d *doctorRun) compareSettings(host string, here, there map[string]string) {
	for _, k := range []string{metrics.SettingBackend, metrics.SettingDriver, metrics.SettingStorage} {
		if here[k] != there[k] {
			d.add(levelFail, "plugin", host, fmt.Sprintf("its plugin has %s=%q, this node's %q: every node must reach the same storage under the same settings", k, there[k], here[k]),
				fmt.Sprintf("on %s: docker plugin disable %s; docker plugin set %s with this node's BACKEND, DRIVER_NAME and storage settings "+
					"(data.source on the shared filesystem, RBD_MONITORS and RBD_POOL, HCLOUD_LOCATION); docker plugin enable %s", host, d.plugin, d.plugin, d.plugin))
		}
	}
	if here[metrics.SettingVersion] != there[metrics.SettingVersion] {
		d.add(levelWarn, "plugin", host, fmt.Sprintf("its plugin is version %s, this node's %s", there[metrics.SettingVersion], here[metrics.SettingVersion]),
			"install the same plugin on every node")
	}
}

// checkBackend: Swarm's volumes beside the backend's: orphans, and
// volumes the backend lost.
func (d *doctorRun) checkBackend(ctx context.Context) {
	d.backend = map[string]bool{}
	token := ""
	for {
		r, err := d.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			d.backend = nil
			d.add(levelFail, "plugin", d.plugin, fmt.Sprintf("the plugin's ListVolumes failed: %v", err),
				"see the plugin's log: docker plugin inspect "+d.plugin+" gives its id; dockerd logs it with plugin=<id>")
			return
		}
		for _, e := range r.GetEntries() {
			d.backend[e.GetVolume().GetVolumeId()] = true
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	d.checked(fmt.Sprintf("%d Swarm volume(s) of %s against the backend's %d", len(d.vols), d.plugin, len(d.backend)))
	known := map[string]bool{}
	for _, v := range d.vols {
		id := volumeID(v)
		if id == "" {
			continue
		}
		known[id] = true
		if !d.backend[id] {
			d.add(levelFail, "volume", v.Name, fmt.Sprintf("Swarm has it as %s, which the backend does not hold: its data is gone", id),
				"docker volume rm --force "+v.Name)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(d.backend)) {
		if !known[id] {
			d.add(levelFail, "orphan", id, "a disk no Swarm volume refers to (left by docker volume rm --force, or a lost manager)",
				"swarm-csi volume rm-orphan "+id+" (once sure nothing in it is needed)")
		}
	}
}

// checkPending: every volume pending creation, with the driver's last
// error for it. fetch reads the plugin's record; nil when it cannot.
func (d *doctorRun) checkPending(ctx context.Context, fetch func(context.Context, grpc.ClientConnInterface) ([]controller.CreateError, error)) {
	var pending []volume.Volume
	for _, v := range d.vols {
		if v.ClusterVolume != nil && volumeID(v) == "" {
			pending = append(pending, v)
		}
	}
	d.checked(fmt.Sprintf("%d volume(s) pending creation", len(pending)))
	if len(pending) == 0 {
		return
	}
	var record map[string]controller.CreateError
	why := ""
	if fetch == nil {
		why = "the plugin is not enabled here"
	} else if errs, err := fetch(ctx, d.conn); status.Code(err) == codes.Unimplemented {
		why = "this plugin keeps no record of failed creations (an older version)"
	} else if err != nil {
		why = fmt.Sprintf("the plugin's record could not be read: %v", err)
	} else {
		record = map[string]controller.CreateError{}
		for _, e := range errs {
			record[e.Name] = e
		}
	}
	for _, v := range pending {
		e, ok := record[v.Name]
		if ok {
			d.add(levelFail, "volume", v.Name, fmt.Sprintf("pending creation: the driver refused it %d time(s) since %s, last at %s: %s: %s",
				e.Attempts, e.First.Format(time.RFC3339), e.Last.Format(time.RFC3339), e.Code, e.Message), createFix(v, e.Code))
			continue
		}
		if age := time.Since(v.ClusterVolume.CreatedAt); age < justCreated {
			d.add(levelWarn, "volume", v.Name, fmt.Sprintf("pending creation for %s: Swarm has not called the plugin yet", age.Round(time.Second)),
				"run swarm-csi doctor again in a minute")
			continue
		}
		problem := "pending creation, and the plugin here has no error for it"
		switch {
		case why != "":
			problem = "pending creation (" + why + ")"
		case d.leader != "" && d.nodes[d.here].Description.Hostname != d.leader:
			problem += ": the leader's plugin calls CreateVolume and keeps its errors; run swarm-csi doctor on " + d.leader
		default:
			problem += ": the manager has not called it (an Engine from 26.0 to 28.1 on the leader, or a plugin enabled after the Engine started)"
		}
		d.add(levelFail, "volume", v.Name, problem, "docker volume inspect "+v.Name+"; restart Docker on the leader if no error ever shows")
	}
}

// justCreated is how long a volume may wait for Swarm's first
// CreateVolume without a failure.
const justCreated = 30 * time.Second

// createFix is what to do about a volume whose creation fails with code.
func createFix(v volume.Volume, code string) string {
	switch code {
	case "InvalidArgument", "AlreadyExists", "OutOfRange":
		return fmt.Sprintf("Swarm retries it for ever: docker volume rm --force %s, then create it again with options the error accepts", v.Name)
	case "NotFound":
		return "create what it names (the cloneFrom or fromSnapshot source), or docker volume rm --force " + v.Name + " and create it again"
	default:
		return "fix the cause above: Swarm retries by itself"
	}
}

// checkSnapshots: snapshots whose volume is gone.
func (d *doctorRun) checkSnapshots(ctx context.Context) {
	if d.backend == nil {
		return
	}
	snaps, err := d.snapshots(ctx, "")
	if status.Code(err) == codes.Unimplemented {
		return
	}
	if err != nil {
		d.add(levelFail, "snapshot", d.plugin, fmt.Sprintf("the plugin's ListSnapshots failed: %v", err), "see the plugin's log")
		return
	}
	d.checked(fmt.Sprintf("%d snapshot(s)", len(snaps)))
	for _, s := range snaps {
		if !d.backend[s.GetSourceVolumeId()] {
			d.add(levelWarn, "snapshot", s.GetSnapshotId(), "its volume "+s.GetSourceVolumeId()+" is gone; it still takes space",
				"swarm-csi snapshot rm "+s.GetSnapshotId()+" if it is not kept on purpose (--opt fromSnapshot= restores it)")
		}
	}
}

// checkPublished: volumes Swarm counts as published to a node that is
// down, gone, or whose plugin does not hold them.
func (d *doctorRun) checkPublished(ctx context.Context) {
	n := 0
	for _, v := range d.vols {
		if v.ClusterVolume == nil {
			continue
		}
		for _, p := range v.ClusterVolume.PublishStatus {
			n++
			if p.State == volume.StatePending {
				continue // on its way
			}
			if problem, fix := d.publishProblem(ctx, v, p.NodeID); problem != "" {
				d.add(levelFail, "volume", v.Name, problem, fix)
			}
		}
	}
	d.checked(fmt.Sprintf("%d publication(s) of volumes to nodes", n))
}

// publishProblem says what is wrong with volume v published to node id,
// or "".
func (d *doctorRun) publishProblem(ctx context.Context, v volume.Volume, nodeID string) (string, string) {
	node, ok := d.nodes[nodeID]
	if !ok {
		return fmt.Sprintf("Swarm counts it as published to node %s, which is not in the swarm any more: Swarm never unpublishes it from there", nodeID),
			"swarm-csi volume release " + v.Name
	}
	host := node.Description.Hostname
	down := fmt.Sprintf("Swarm counts it as published to %s (%s), which is %s: it stays in use until that node is back or removed", host, nodeID, node.Status.State)
	downFix := fmt.Sprintf("start Docker on %s; if %s is gone for good: docker node rm --force %s, then swarm-csi volume release %s", host, host, nodeID, v.Name)
	asked, ok := answering(node, slices.Collect(maps.Values(d.nodes)), d.plugin)
	if !ok {
		return down, downFix
	}
	held, _, err := d.held.holds(ctx, asked, &v)
	switch {
	case err != nil && asked.ID == node.ID:
		return "", "" // the metrics check reported why this node cannot be asked
	case err != nil || held:
		if asked.ID != node.ID {
			return down, downFix
		}
		return "", ""
	case asked.ID != node.ID:
		return fmt.Sprintf("Swarm counts it as published to %s (%s), which is %s; the same host is in the swarm again as %s, and its plugin does not hold it",
			host, nodeID, node.Status.State, asked.ID), "swarm-csi volume release " + v.Name
	}
	return fmt.Sprintf("Swarm counts it as published to %s, whose plugin does not hold it", host), "swarm-csi volume release " + v.Name
}

// answering is the node whose plugin answers for node n's host: n itself
// when it is ready, else a ready node whose plugin has the same CSI node
// id, the driver's name for a host (n's host left the swarm and joined it
// again, as a new node).
func answering(n swarm.Node, nodes []swarm.Node, plugin string) (swarm.Node, bool) {
	if n.Status.State == swarm.NodeStateReady {
		return n, true
	}
	id := csiNodeID(n, plugin)
	for _, o := range nodes {
		if id != "" && o.ID != n.ID && o.Status.State == swarm.NodeStateReady && csiNodeID(o, plugin) == id {
			return o, true
		}
	}
	return swarm.Node{}, false
}

func volumeID(v volume.Volume) string {
	if v.ClusterVolume == nil || v.ClusterVolume.Info == nil {
		return ""
	}
	return v.ClusterVolume.Info.VolumeID
}

func (d *doctorRun) write() error {
	f := d.report.Findings
	sort.SliceStable(f, func(i, j int) bool { return f[i].Level == levelFail && f[j].Level != levelFail })
	if d.report.Findings == nil {
		d.report.Findings = []finding{}
	}
	if d.json {
		return d.op.print(d.report, nil)
	}
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	for _, c := range d.report.Checked {
		fmt.Fprintf(w, "checked\t%s\n", c)
	}
	w.Flush()
	for _, f := range d.report.Findings {
		writeFinding(d.out, f)
	}
	if d.report.OK {
		fmt.Fprintln(d.out, "ok: nothing is wrong")
	}
	return nil
}

// writeFinding prints a finding as its line: LEVEL check subject: problem
// followed by the fix.
func writeFinding(w io.Writer, f finding) {
	fmt.Fprintf(w, "%s %s %s: %s\n", f.Level, f.Check, f.Subject, f.Problem)
	if f.Fix != "" {
		fmt.Fprintf(w, "     fix: %s\n", f.Fix)
	}
}

// holders asks nodes' plugins which volumes they hold: this node's
// through its socket, the others through their metrics endpoint.
type holders struct {
	o       *op
	here    string
	port    string
	portErr error
	scraped map[string]scraped // by node id
}

// scraped is what a node's plugin told through its metrics.
type scraped struct {
	held     map[string]bool   // the ids of the volumes it has published
	settings map[string]string // the labels of metrics.SettingsSeries; nil if it has none
	err      error
}

func (o *op) newHolders(ctx context.Context) *holders {
	h := &holders{o: o, scraped: map[string]scraped{}}
	h.here, _ = o.engine.ThisNode(ctx)
	if o.installed != nil {
		h.port, h.portErr = o.metricsPort(ctx)
	} else {
		h.portErr = errors.New("the plugin is not installed here")
	}
	return h
}

// scrape reads n's plugin's metrics, once per node.
func (h *holders) scrape(ctx context.Context, n swarm.Node) scraped {
	if s, ok := h.scraped[n.ID]; ok {
		return s
	}
	s := scraped{err: h.portErr}
	if s.err == nil {
		url := "http://" + net.JoinHostPort(nodeAddr(n), h.port) + "/metrics"
		var fams map[string]*dto.MetricFamily
		if fams, s.err = scrapeMetrics(ctx, url); s.err == nil {
			s.held = map[string]bool{}
			for _, m := range fams[metrics.VolumeAbnormal].GetMetric() {
				s.held[labels(m)[metrics.LabelVolumeID]] = true
			}
			for _, m := range fams[metrics.SettingsSeries].GetMetric() {
				s.settings = labels(m)
			}
		}
	}
	h.scraped[n.ID] = s
	return s
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// holds tells whether n's plugin holds volume v (has it mounted or
// published), and how it was asked.
func (h *holders) holds(ctx context.Context, n swarm.Node, v *volume.Volume) (bool, string, error) {
	id := v.ClusterVolume.Info.VolumeID
	if n.ID == h.here {
		if h.o.node == nil {
			return false, "", errors.New("this node's plugin is not enabled")
		}
		held, err := h.o.heldHere(ctx, v, id)
		return held, "this node's plugin socket", err
	}
	sc := h.scrape(ctx, n)
	if sc.err != nil {
		return false, "", fmt.Errorf("node %s: %w", n.Description.Hostname, sc.err)
	}
	return sc.held[id], "the metrics of " + n.Description.Hostname + "'s plugin", nil
}

// heldHere asks this node's plugin whether anything of volume v is
// mounted: its staging path or its published path.
func (o *op) heldHere(ctx context.Context, v *volume.Volume, id string) (bool, error) {
	for _, req := range []*csi.NodeGetVolumeHealthRequest{
		{VolumeId: id, StagingTargetPath: "/data/staged/" + v.ClusterVolume.ID},
		{VolumeId: id, VolumePublishPath: publishedPath(v)},
	} {
		r, err := o.node.NodeGetVolumeHealth(ctx, req)
		if err != nil {
			return false, fmt.Errorf("this node's plugin: NodeGetVolumeHealth: %w", err)
		}
		sts := r.GetVolumeHealth().GetHealthStatuses()
		if len(sts) == 0 || (sts[0].GetReason() != "NotMounted" && sts[0].GetReason() != "PathMissing") {
			return true, nil
		}
	}
	return false, nil
}
