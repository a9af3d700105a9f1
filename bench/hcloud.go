package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

const benchToken = "bench-token-31f4c2"

// fakeCloud is the fake Hetzner Cloud API of an hcloud run, in this
// process, with the one server the driver runs on.
type fakeCloud struct {
	*fakecloud.Cloud
	server fakecloud.Server
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
		"--hcloud-cluster", "bench",
		"--hcloud-metadata-endpoint", s.MetadataURL,
		"--hcloud-device-dir", s.DeviceDir,
	}
	return &fakeCloud{Cloud: c, server: s}, args, []string{"HCLOUD_TOKEN_FILE=" + tokenFile}, nil
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

// CloudModeReport is one mode of an hcloud run: the driver's lifecycle on
// the fake cloud and the API requests it made.
type CloudModeReport struct {
	Mode     string     `json:"mode"`
	Parallel int        `json:"parallel"`
	Driver   SideReport `json:"driver"`
	// APICalls is the mode's API requests per volume lifecycle, and
	// APICallsByRoute the same by method and route.
	APICalls        float64            `json:"api_calls_per_lifecycle"`
	APICallsByRoute map[string]float64 `json:"api_calls_by_route"`
	// ActionFloorMs is the least a lifecycle can take: its three actions
	// (create, attach, detach) at the fake cloud's delay.
	ActionFloorMs float64 `json:"action_floor_ms"`
	// Retried counts the calls answered Aborted (an action outlasted the
	// driver's wait) and made again.
	Retried int64 `json:"retried"`
}

// cloudModes runs the sequential and parallel lifecycles of the driver on
// the fake cloud, counting the API requests of each mode.
func (b *bench) cloudModes(ctx context.Context, cloud *fakeCloud) ([]CloudModeReport, error) {
	cfg := b.cfg
	if _, err := b.driverLifecycle("warmup", cfg.FS, cfg.Size).run(ctx); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	var reports []CloudModeReport
	for _, m := range []struct {
		name  string
		batch int
	}{{"sequential", 1}, {"parallel", cfg.Parallel}} {
		fmt.Fprintf(b.log, "%s: %d volumes on the fake Hetzner Cloud ...\n", m.name, cfg.Volumes)
		cloud.ResetRequests()
		b.retried.Store(0)
		s := &side{name: "driver", newLifecycle: b.driverLifecycle}
		for start := 0; start < cfg.Volumes; start += m.batch {
			err := s.batch(ctx, min(m.batch, cfg.Volumes-start), func(i int) *lifecycle {
				return s.newLifecycle(fmt.Sprintf("%s-%03d", m.name[:3], start+i), cfg.FS, cfg.Size)
			})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.name, err)
			}
		}
		reqs := cloud.Requests()
		r := CloudModeReport{
			Mode:            m.name,
			Parallel:        m.batch,
			Driver:          s.report(),
			APICalls:        float64(reqs.Total) / float64(cfg.Volumes),
			APICallsByRoute: map[string]float64{},
			ActionFloorMs:   3 * float64(cfg.ActionDelay) / float64(time.Millisecond),
			Retried:         b.retried.Load(),
		}
		for route, n := range reqs.ByRoute {
			r.APICallsByRoute[route] = float64(n) / float64(cfg.Volumes)
		}
		reports = append(reports, r)
	}
	return reports, nil
}

// printCloud prints the modes of an hcloud run.
func printCloud(w io.Writer, c config, modes []CloudModeReport) {
	for _, m := range modes {
		fmt.Fprintf(w, "\nhcloud %s: %d volumes of %s %s, up to %d at a time, actions take %s\n",
			m.Mode, c.Volumes, formatSize(c.Size), c.FS, m.Parallel, c.ActionDelay)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  step\t  n\t  p50 ms\t  p95 ms")
		for _, st := range append(m.Driver.Steps, m.Driver.Lifecycle) {
			fmt.Fprintf(tw, "  %s\t%3d\t%8.1f\t%8.1f\n", st.Step, st.Samples, st.P50ms, st.P95ms)
		}
		tw.Flush()
		fmt.Fprintf(w, "  lifecycle p50 %.0f ms, p95 %.0f ms; its three actions take %.0f ms at least\n",
			m.Driver.Lifecycle.P50ms, m.Driver.Lifecycle.P95ms, m.ActionFloorMs)
		fmt.Fprintf(w, "  API requests per lifecycle: %.1f; calls answered Aborted and retried: %d\n", m.APICalls, m.Retried)
		routes := slices.Sorted(maps.Keys(m.APICallsByRoute))
		slices.SortStableFunc(routes, func(a, b string) int {
			return int(1000*m.APICallsByRoute[b]) - int(1000*m.APICallsByRoute[a])
		})
		for _, route := range routes {
			fmt.Fprintf(w, "    %5.2f  %s\n", m.APICallsByRoute[route], route)
		}
		fmt.Fprintf(w, "  wall time %.2fs (%.2f volumes/s)\n", m.Driver.WallSeconds, m.Driver.VolumesPerSec)
	}
}
