package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// targetRatio is the goal for driver/raw lifecycle time at p50, for ext4:
// with the loop backend no slower than the raw tools one at a time, and at
// most 1.3 times as slow with several lifecycles in flight (each step waits
// on the others' fsyncs and loop device set-ups, where the raw tools wait on
// losetup's).
func targetRatio(backend string, parallel int) float64 {
	switch {
	case backend == "rbd":
		return 1.2
	case parallel > 1:
		return 1.3
	}
	return 1.0
}

type Report struct {
	Config    config            `json:"config"`
	Dir       string            `json:"dir"`
	Modes     []ModeReport      `json:"modes"`
	Cloud     []CloudModeReport `json:"cloud,omitempty"` // --backend hcloud
	RSS       *RSSReport        `json:"rss,omitempty"`
	IO        []IOReport        `json:"io,omitempty"`        // --io
	Store     *StoreReport      `json:"store,omitempty"`     // --store
	Alternate *AlternateReport  `json:"alternate,omitempty"` // --alternate
	Leftovers []string          `json:"leftovers,omitempty"` // mounts and loop devices the final sweep removed
}

type ModeReport struct {
	Mode         string     `json:"mode"`
	Parallel     int        `json:"parallel"`
	Driver       SideReport `json:"driver"`
	Raw          SideReport `json:"raw"`
	RatioP50     float64    `json:"ratio_p50"`
	RatioP95     float64    `json:"ratio_p95"`
	WithinTarget *bool      `json:"within_target,omitempty"` // ext4 only
	// BackendCalls are the driver's calls to Ceph per lifecycle (rbd), from
	// its metrics; BackendCallsByName the same by operation.
	BackendCalls       float64            `json:"backend_calls_per_lifecycle,omitempty"`
	BackendCallsByName map[string]float64 `json:"backend_calls_by_name,omitempty"`
}

type SideReport struct {
	Steps         []Stat  `json:"steps"`
	Lifecycle     Stat    `json:"lifecycle"`
	WallSeconds   float64 `json:"wall_s"`
	VolumesPerSec float64 `json:"volumes_per_s"`
}

type Stat struct {
	Step    string  `json:"step"`
	Samples int     `json:"samples"`
	P50ms   float64 `json:"p50_ms"`
	P95ms   float64 `json:"p95_ms"`
}

type RSSReport struct {
	Volumes  int   `json:"volumes"`
	IdleKiB  int64 `json:"idle_vm_rss_kib"` // before the volumes
	VmRSSKiB int64 `json:"vm_rss_kib"`
	VmHWMKiB int64 `json:"vm_hwm_kib"`
	// AttachProcesses are the processes the driver started to attach the
	// volumes (rbd-fuse), AttachKiB their resident memory together.
	AttachProcesses int   `json:"attach_processes,omitempty"`
	AttachKiB       int64 `json:"attach_rss_kib,omitempty"`
}

func newModeReport(mode string, parallel int, cfg config, drv, raw *side) *ModeReport {
	m := &ModeReport{Mode: mode, Parallel: parallel, Driver: drv.report(), Raw: raw.report()}
	m.RatioP50 = m.Driver.Lifecycle.P50ms / m.Raw.Lifecycle.P50ms
	m.RatioP95 = m.Driver.Lifecycle.P95ms / m.Raw.Lifecycle.P95ms
	if cfg.FS == "ext4" {
		ok := m.RatioP50 <= targetRatio(cfg.Backend, parallel)
		m.WithinTarget = &ok
	}
	return m
}

func (s *side) report() SideReport {
	r := SideReport{Lifecycle: stat("lifecycle", s.total), WallSeconds: s.wall.Seconds()}
	for i, name := range s.steps {
		r.Steps = append(r.Steps, stat(name, s.times[i]))
	}
	if r.WallSeconds > 0 {
		r.VolumesPerSec = float64(len(s.total)) / r.WallSeconds
	}
	return r
}

func stat(name string, ds []time.Duration) Stat {
	return Stat{Step: name, Samples: len(ds), P50ms: percentile(ds, 0.50), P95ms: percentile(ds, 0.95)}
}

// percentile is the nearest-rank percentile of ds, in milliseconds.
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return float64(s[max(i, 0)]) / float64(time.Millisecond)
}

func (r *Report) print(w io.Writer) {
	c := r.Config
	printCloud(w, c, r.Cloud)
	printIO(w, c, r.IO)
	r.Store.print(w)
	r.Alternate.print(w)
	for _, m := range r.Modes {
		fmt.Fprintf(w, "\n%s: %d volumes of %s %s per side, up to %d at a time\n",
			m.Mode, c.Volumes, formatSize(c.Size), c.FS, m.Parallel)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  side\tstep\t  n\t  p50 ms\t  p95 ms")
		for _, s := range []struct {
			name string
			r    SideReport
		}{{"driver", m.Driver}, {"raw", m.Raw}} {
			for _, st := range append(s.r.Steps, s.r.Lifecycle) {
				fmt.Fprintf(tw, "  %s\t%s\t%3d\t%8.1f\t%8.1f\n", s.name, st.Step, st.Samples, st.P50ms, st.P95ms)
			}
		}
		tw.Flush()
		verdict := "target applies to ext4 only"
		if m.WithinTarget != nil {
			verdict = "NOT within target"
			if *m.WithinTarget {
				verdict = "within target"
			}
		}
		fmt.Fprintf(w, "  lifecycle ratio driver/raw: p50 %.2f (target <= %.2f: %s), p95 %.2f\n",
			m.RatioP50, targetRatio(c.Backend, m.Parallel), verdict, m.RatioP95)
		fmt.Fprintf(w, "  wall time: driver %.2fs (%.2f volumes/s), raw %.2fs (%.2f volumes/s)\n",
			m.Driver.WallSeconds, m.Driver.VolumesPerSec, m.Raw.WallSeconds, m.Raw.VolumesPerSec)
		if m.BackendCalls > 0 {
			fmt.Fprintf(w, "  driver's Ceph calls per lifecycle: %.1f (%s)\n", m.BackendCalls, formatCalls(m.BackendCallsByName))
		}
	}
	if r.RSS != nil {
		fmt.Fprintf(w, "\ndriver memory: VmRSS %.1f MiB idle; with %d volumes (%s ext4) staged and published: VmRSS %.1f MiB, VmHWM %.1f MiB\n",
			float64(r.RSS.IdleKiB)/1024, r.RSS.Volumes, formatSize(c.RSSSize), float64(r.RSS.VmRSSKiB)/1024, float64(r.RSS.VmHWMKiB)/1024)
		if r.RSS.AttachProcesses > 0 {
			fmt.Fprintf(w, "attach processes: %d, VmRSS %.1f MiB together\n", r.RSS.AttachProcesses, float64(r.RSS.AttachKiB)/1024)
		}
	}
	if len(r.Leftovers) > 0 {
		fmt.Fprintf(w, "\nWARNING: left behind after teardown, removed by the final sweep: %s\n", strings.Join(r.Leftovers, " "))
	}
}

// formatCalls lists calls by name with their counts, most frequent first.
func formatCalls(calls map[string]float64) string {
	names := slices.Collect(maps.Keys(calls))
	slices.SortFunc(names, func(a, b string) int {
		if c := cmp.Compare(calls[b], calls[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.1f", n, calls[n])
	}
	return strings.Join(parts, ", ")
}

// byteSize is a flag value: bytes, or a number with a K, M, G or T suffix
// (binary units; "1G", "1GiB" and "1GB" all mean 2^30).
type byteSize int64

func (b *byteSize) String() string { return formatSize(int64(*b)) }

func (b *byteSize) Set(s string) error {
	value := strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i")
	num := strings.TrimRight(value, "KMGTkmgt")
	shift := 0
	if unit := value[len(num):]; unit != "" {
		i := strings.Index("KMGT", strings.ToUpper(unit))
		if len(unit) != 1 || i < 0 {
			return fmt.Errorf("bad size %q", s)
		}
		shift = 10 * (i + 1)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64>>shift {
		return fmt.Errorf("bad size %q", s)
	}
	*b = byteSize(n << shift)
	return nil
}

func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  int
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", n)
}
