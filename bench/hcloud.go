package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud"
	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

const (
	benchToken   = "bench-token-31f4c2"
	benchCluster = "bench"
)

// fakeCloud is the fake Hetzner Cloud API of an hcloud run, in this
// process, with the one server the driver runs on, and the driver's
// arguments and environment for it.
type fakeCloud struct {
	*fakecloud.Cloud
	server    fakecloud.Server
	args, env []string
}

// startCloud starts the fake cloud under dir and returns the driver's
// arguments and environment for it.
func startCloud(dir string, delay time.Duration) (*fakeCloud, []string, []string, error) {
	c, err := fakecloud.Start(fakecloud.Options{Dir: filepath.Join(dir, "cloud"), Token: benchToken, ActionDelay: delay})
	if err != nil {
		return nil, nil, nil, err
	}
	s, err := c.AddServer("bench-node", "fsn1")
	if err != nil {
		return nil, nil, nil, errors.Join(err, c.Close())
	}
	tokenFile := filepath.Join(dir, "hcloud-token")
	if err := os.WriteFile(tokenFile, []byte(benchToken), 0o600); err != nil {
		return nil, nil, nil, errors.Join(err, c.Close())
	}
	args := []string{
		"--backend", "hcloud",
		"--hcloud-endpoint", c.URL(),
		"--hcloud-cluster", benchCluster,
		"--hcloud-metadata-endpoint", s.MetadataURL,
		"--hcloud-device-dir", s.DeviceDir,
	}
	env := []string{"HCLOUD_TOKEN_FILE=" + tokenFile}
	return &fakeCloud{Cloud: c, server: s, args: args, env: env}, args, env, nil
}

// close stops the fake cloud; a volume or device still there is an error.
func (c *fakeCloud) close() error {
	var err error
	if vols := c.Volumes(); len(vols) > 0 {
		err = fmt.Errorf("the fake cloud still has %d volumes", len(vols))
	}
	if left := c.Leftovers(); len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("the fake cloud holds leftovers: %v", left))
	}
	return errors.Join(err, c.Close())
}

// addOthers adds n volumes of the driver's cluster to the project, as a
// project with many volumes has: volumes the lifecycles never touch.
func (c *fakeCloud) addOthers(n int) ([]int64, error) {
	sum := sha256.Sum256([]byte("other"))
	return c.AddVolumes(n, "fsn1", map[string]string{
		hcloud.LabelCluster: benchCluster, hcloud.LabelName: hex.EncodeToString(sum[:24]),
		"swarm-csi/fs": "ext4", "swarm-csi/access-mode": "SINGLE_NODE_WRITER",
	})
}

// CloudModeReport is one mode of an hcloud run: the driver's lifecycles on
// the fake cloud at one action delay, and the API requests they made.
type CloudModeReport struct {
	// Mode is "first" (the first lifecycle after the driver started),
	// "sequential", "crowded" (sequential with OtherVolumes of the
	// cluster in the project) or "parallel".
	Mode          string     `json:"mode"`
	ActionDelayMs float64    `json:"action_delay_ms"`
	OtherVolumes  int        `json:"other_volumes,omitempty"`
	Parallel      int        `json:"parallel"`
	Driver        SideReport `json:"driver"`
	// Publish is ControllerPublishVolume, NodeStageVolume and
	// NodePublishVolume of a lifecycle together.
	Publish Stat `json:"publish"`
	// APICalls is the mode's API requests per volume lifecycle;
	// APICallsByRoute the same by method and route, and APICallsByRPC
	// by CSI call (not in parallel mode, where calls overlap).
	APICalls        float64            `json:"api_calls_per_lifecycle"`
	APICallsByRoute map[string]float64 `json:"api_calls_by_route"`
	APICallsByRPC   map[string]float64 `json:"api_calls_by_rpc,omitempty"`
	// ActionFloorMs is the least a lifecycle can take: its three actions
	// (create, attach, detach) at the fake cloud's delay.
	ActionFloorMs float64 `json:"action_floor_ms"`
	// Retried counts the calls answered Aborted (an action outlasted the
	// driver's wait) and made again.
	Retried int64 `json:"retried"`
}

// cloudModes runs, at each action delay, a freshly started driver's first
// lifecycle, then sequential lifecycles, the same with cfg.OtherVolumes
// more volumes in the project, and parallel ones, counting the API
// requests of each mode. The driver restarts for each delay after the
// first, so that each first lifecycle is one after a start.
func (b *bench) cloudModes(ctx context.Context, cloud *fakeCloud) (reports []CloudModeReport, err error) {
	cfg := b.cfg
	started := b.drv
	defer func() {
		if b.drv != started { // run stops the driver it started, not this one
			if ctx.Err() == nil {
				err = b.drv.annotate(err)
			}
			err = errors.Join(err, b.drv.stop())
			b.drv = started
		}
	}()
	for i, delay := range cfg.ActionDelays {
		cloud.SetActionDelay("", delay)
		if i > 0 {
			fmt.Fprintf(b.log, "restarting the driver for actions of %s ...\n", delay)
			if err := b.restartDriver(ctx, cloud); err != nil {
				return reports, err
			}
		}
		for _, m := range []struct {
			name   string
			batch  int
			volume int
			others int
		}{{"first", 1, 1, 0}, {"sequential", 1, cfg.Volumes, 0}, {"crowded", 1, cfg.Volumes, cfg.OtherVolumes}, {"parallel", cfg.Parallel, cfg.Volumes, 0}} {
			if m.name == "crowded" && m.others == 0 {
				continue
			}
			fmt.Fprintf(b.log, "actions of %s, %s: %d volumes on the fake Hetzner Cloud ...\n", delay, m.name, m.volume)
			var others []int64
			if m.others > 0 {
				if others, err = cloud.addOthers(m.others); err != nil {
					return reports, err
				}
			}
			r, err := b.cloudMode(ctx, cloud, m.name, m.batch, m.volume, delay)
			cloud.RemoveVolumes(others)
			if err != nil {
				return reports, fmt.Errorf("actions of %s, %s: %w", delay, m.name, err)
			}
			r.OtherVolumes = m.others
			reports = append(reports, *r)
		}
	}
	return reports, nil
}

// restartDriver stops the driver and starts it again, on the same data.
func (b *bench) restartDriver(ctx context.Context, cloud *fakeCloud) error {
	bin := b.drv.cmd.Path
	if err := b.drv.stop(); err != nil {
		return err
	}
	drv, err := startDriver(ctx, bin, b.dir, cloud.args, cloud.env)
	if err != nil {
		return err
	}
	b.drv = drv
	return nil
}

// cloudMode runs n lifecycles, batch at a time, and reports their times
// and API requests.
func (b *bench) cloudMode(ctx context.Context, cloud *fakeCloud, name string, batch, n int, delay time.Duration) (*CloudModeReport, error) {
	cloud.ResetRequests()
	b.retried.Store(0)
	byRPC := map[string]int{}
	s := &side{name: "driver", newLifecycle: b.driverLifecycle}
	for start := 0; start < n; start += batch {
		err := s.batch(ctx, min(batch, n-start), func(i int) *lifecycle {
			l := s.newLifecycle(fmt.Sprintf("%s-%s-%03d", strings.ReplaceAll(delay.String(), ".", "_"), name[:3], start+i), b.cfg.FS, b.cfg.Size)
			if batch == 1 {
				cloud.countByStep(l, byRPC)
			}
			return l
		})
		if err != nil {
			return nil, err
		}
	}
	reqs := cloud.Requests()
	r := &CloudModeReport{
		Mode:            name,
		ActionDelayMs:   float64(delay) / float64(time.Millisecond),
		Parallel:        batch,
		Driver:          s.report(),
		Publish:         s.sumOf("publish", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume"),
		APICalls:        float64(reqs.Total) / float64(n),
		APICallsByRoute: map[string]float64{},
		ActionFloorMs:   3 * float64(delay) / float64(time.Millisecond),
		Retried:         b.retried.Load(),
	}
	for route, k := range reqs.ByRoute {
		r.APICallsByRoute[route] = float64(k) / float64(n)
	}
	if batch == 1 {
		r.APICallsByRPC = map[string]float64{}
		for rpc, k := range byRPC {
			r.APICallsByRPC[rpc] = float64(k) / float64(n)
		}
	}
	return r, nil
}

// countByStep makes each step of a lifecycle add its API requests to
// into, by step name. Only for lifecycles one at a time.
func (c *fakeCloud) countByStep(l *lifecycle, into map[string]int) {
	count := func(s *step) {
		do := s.do
		s.do = func(ctx context.Context) error {
			before := c.Requests().Total
			err := do(ctx)
			into[s.name] += c.Requests().Total - before
			return err
		}
	}
	for i := range l.setup {
		count(&l.setup[i])
		if u := l.setup[i].undo; u != nil {
			count(u)
		}
	}
}

// sumOf is the statistic of the sum of some steps of each lifecycle.
func (s *side) sumOf(name string, steps ...string) Stat {
	s.mu.Lock()
	defer s.mu.Unlock()
	sums := make([]time.Duration, len(s.total))
	for i, st := range s.steps {
		if slices.Contains(steps, st) {
			for j, d := range s.times[i] {
				sums[j] += d
			}
		}
	}
	return stat(name, sums)
}

// printCloud prints the modes of an hcloud run, then a summary.
func printCloud(w io.Writer, c config, modes []CloudModeReport) {
	if len(modes) == 0 {
		return
	}
	for _, m := range modes {
		what := fmt.Sprintf("%d volumes of %s %s, up to %d at a time", m.Driver.Lifecycle.Samples, formatSize(c.Size), c.FS, m.Parallel)
		switch m.Mode {
		case "first":
			what = fmt.Sprintf("the first lifecycle after the driver started, a volume of %s %s", formatSize(c.Size), c.FS)
		case "crowded":
			what += fmt.Sprintf(", %d other volumes of the cluster in the project", m.OtherVolumes)
		}
		fmt.Fprintf(w, "\nhcloud %s, actions take %s: %s\n", m.Mode, time.Duration(m.ActionDelayMs*float64(time.Millisecond)), what)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  step\t  n\t  p50 ms\t  p95 ms\t  API requests")
		for _, st := range append(m.Driver.Steps, m.Publish, m.Driver.Lifecycle) {
			calls := ""
			switch {
			case st.Step == "lifecycle":
				calls = fmt.Sprintf("%6.2f", m.APICalls)
			case m.APICallsByRPC != nil && st.Step != "publish":
				calls = fmt.Sprintf("%6.2f", m.APICallsByRPC[st.Step])
			}
			fmt.Fprintf(tw, "  %s\t%3d\t%8.1f\t%8.1f\t%s\n", st.Step, st.Samples, st.P50ms, st.P95ms, calls)
		}
		tw.Flush()
		fmt.Fprintf(w, "  publish is ControllerPublishVolume + NodeStageVolume + NodePublishVolume; the three actions of a lifecycle take %.0f ms at least\n", m.ActionFloorMs)
		fmt.Fprintf(w, "  API requests per lifecycle: %.2f; calls answered Aborted and retried: %d\n", m.APICalls, m.Retried)
		routes := slices.Sorted(maps.Keys(m.APICallsByRoute))
		slices.SortStableFunc(routes, func(a, b string) int {
			return int(1000*m.APICallsByRoute[b]) - int(1000*m.APICallsByRoute[a])
		})
		for _, route := range routes {
			fmt.Fprintf(w, "    %5.2f  %s\n", m.APICallsByRoute[route], route)
		}
		fmt.Fprintf(w, "  wall time %.2fs (%.2f volumes/s)\n", m.Driver.WallSeconds, m.Driver.VolumesPerSec)
	}
	printCloudSummary(w, modes)
}

// printCloudSummary prints the figures of every mode in one table.
func printCloudSummary(w io.Writer, modes []CloudModeReport) {
	fmt.Fprintln(w, "\nhcloud summary (p50; API requests per lifecycle)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  actions\tmode\t  requests\t  publish ms\t  lifecycle ms")
	for _, m := range modes {
		mode := m.Mode
		switch m.Mode {
		case "crowded":
			mode = strconv.Itoa(m.OtherVolumes) + " other volumes"
		case "parallel":
			mode = fmt.Sprintf("parallel (%d)", m.Parallel)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%8.2f\t%9.1f\t%10.1f\n", time.Duration(m.ActionDelayMs*float64(time.Millisecond)), mode,
			m.APICalls, m.Publish.P50ms, m.Driver.Lifecycle.P50ms)
	}
	tw.Flush()
}
