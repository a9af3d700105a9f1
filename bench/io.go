package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// ioTargetRatio is the goal for every fio job: the driver's volume does at
// least this fraction of the hand-attached disk's operations per second.
const ioTargetRatio = 0.95

// ioJob is one fio workload, run for the same time on every side.
type ioJob struct {
	Name string
	Args []string
}

// ioJobs are the workloads of a database's volume: a log's small
// synchronous writes, a bulk load, point reads alone and in parallel, and
// a mix of both.
var ioJobs = []ioJob{
	{"randwrite 4k fsync", []string{"--rw=randwrite", "--bs=4k", "--ioengine=psync", "--fsync=1"}},
	{"seqwrite 1M direct", []string{"--rw=write", "--bs=1M", "--ioengine=libaio", "--iodepth=4", "--direct=1"}},
	{"randread 4k direct qd1", []string{"--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=1", "--direct=1"}},
	{"randread 4k direct qd16", []string{"--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1"}},
	{"randrw 70/30 4k direct qd8", []string{"--rw=randrw", "--rwmixread=70", "--bs=4k", "--ioengine=libaio", "--iodepth=8", "--direct=1"}},
}

// IOReport holds the fio figures of one filesystem.
type IOReport struct {
	FS        string        `json:"fs"`
	SizeBytes int64         `json:"size_bytes"`
	FileBytes int64         `json:"file_bytes"`
	Rounds    int           `json:"rounds"`
	RuntimeS  float64       `json:"runtime_s"`
	Jobs      []IOJobReport `json:"jobs"`
}

type IOJobReport struct {
	Job   string       `json:"job"`
	Sides []IOSideStat `json:"sides"`
}

// IOSideStat is one side's figures for one job: one sample per round.
type IOSideStat struct {
	Side       string    `json:"side"`
	IOPS       []float64 `json:"iops"`
	MedianIOPS float64   `json:"median_iops"`
	MedianMiBs float64   `json:"median_mib_s"`
	// Ratio is the median over the rounds of the side's IOPS over the
	// hand-attached disk's in the same round (driver sides): each pair ran
	// a few seconds apart, so a drift of the machine's load cancels out.
	Ratio        float64 `json:"ratio,omitempty"`
	WithinTarget *bool   `json:"within_target,omitempty"`
}

// ioSide is one contender of the I/O figures: a volume set up once, fio
// run on its mount point round after round.
type ioSide struct {
	name  string
	life  *lifecycle
	dir   string // where fio's file lives
	iops  [][]float64
	bytes [][]float64 // bytes per second
}

// ioConfig holds the settings of --io.
type ioConfig struct {
	IO            bool          `json:"io,omitempty"`
	IOFilesystems []string      `json:"io_fs,omitempty"`
	IORuntime     time.Duration `json:"io_runtime_ns,omitempty"`
	IORounds      int           `json:"io_rounds,omitempty"`
	IOFileSize    int64         `json:"io_file_bytes,omitempty"`
	DirectIO      []string      `json:"direct_io,omitempty"`
}

const (
	defaultIORuntime = 4 * time.Second
	defaultIORounds  = 5
)

// ioFlags defines the flags of --io.
func (c *config) ioFlags() {
	flag.BoolVar(&c.IO, "io", false, "measure I/O through a volume with fio instead of the lifecycle")
	flag.DurationVar(&c.IORuntime, "runtime", defaultIORuntime, "io: how long each fio job runs per side and round")
	flag.IntVar(&c.IORounds, "rounds", defaultIORounds, "io: rounds of all jobs; --alternate: rounds on each store (default 200)")
	flag.Var((*byteSize)(&c.IOFileSize), "file-size", "io: size of fio's file on each volume (default: a quarter of --size, at most 1GiB)")
	flag.Func("direct-io", "io, loop: the volumes' directIO setting(s), e.g. true,false (default: the backend's)", func(s string) error {
		c.DirectIO = strings.Split(s, ",")
		return nil
	})
}

// ioDefaults adapts the defaults to --io, keeping explicitly set flags:
// both filesystems, a volume as large as a small database's with a file a
// quarter of it; with --quick, small and short.
func (c *config) ioDefaults(explicit map[string]bool, quick bool) {
	c.IOFilesystems = []string{"ext4", "xfs"}
	if explicit["fs"] {
		c.IOFilesystems = []string{c.FS}
	}
	size, runtime, rounds := int64(4*gib), defaultIORuntime, defaultIORounds
	if quick {
		size, runtime, rounds = 320*mib, time.Second, 1
	}
	if !explicit["size"] {
		c.Size = size
	}
	if !explicit["file-size"] {
		c.IOFileSize = min(gib, c.Size/4/mib*mib)
	}
	if !explicit["runtime"] {
		c.IORuntime = runtime
	}
	if !explicit["rounds"] {
		c.IORounds = rounds
	}
}

func (c *config) validateIO() error {
	switch {
	case !c.IO:
		return nil
	case c.Backend == "hcloud":
		return fmt.Errorf("--io: the fake cloud has no disks; use --backend loop or rbd")
	case c.IORuntime < time.Second || c.IORuntime%time.Second != 0:
		return fmt.Errorf("--runtime %s: whole seconds, at least 1s", c.IORuntime)
	case c.IORounds < 1:
		return fmt.Errorf("--rounds %d: want 1 or more", c.IORounds)
	case c.IOFileSize <= 0 || c.IOFileSize > c.Size/2:
		return fmt.Errorf("--file-size %s: want at most half of --size %s", formatSize(c.IOFileSize), formatSize(c.Size))
	case c.Backend != "loop" && len(c.DirectIO) > 0:
		return fmt.Errorf("--direct-io applies to the loop backend only")
	}
	for _, fs := range c.IOFilesystems {
		if fs == "xfs" && c.Size < 300*mib {
			return fmt.Errorf("--size %s: xfs needs at least 300MiB", formatSize(c.Size))
		}
	}
	for _, d := range c.DirectIO {
		if d != "true" && d != "false" {
			return fmt.Errorf("--direct-io %q: want true, false or true,false", d)
		}
	}
	return nil
}

// ioModes runs the fio jobs for each filesystem.
func (b *bench) ioModes(ctx context.Context) ([]IOReport, error) {
	var reps []IOReport
	for _, fs := range b.cfg.IOFilesystems {
		r, err := b.ioMode(ctx, fs)
		if err != nil {
			return reps, fmt.Errorf("io %s: %w", fs, err)
		}
		reps = append(reps, *r)
	}
	return reps, nil
}

// ioSides are the driver's volumes (one per --direct-io setting, or one
// with the backend's default) and the disk attached by hand, last.
func (b *bench) ioSides(fs string) []*ioSide {
	var sides []*ioSide
	settings := b.cfg.DirectIO
	if len(settings) == 0 {
		settings = []string{""}
	}
	for i, d := range settings {
		name := fmt.Sprintf("io-%s-%d", fs, i)
		s := &ioSide{name: "driver", dir: b.driverTarget(name)}
		var mutable map[string]string
		if d != "" {
			s.name = "driver directIO=" + d
			mutable = map[string]string{"directIO": d}
		}
		s.life = b.driverVolume(name, fs, b.cfg.Size, mutable)
		sides = append(sides, s)
	}
	name := "io-" + fs
	return append(sides, &ioSide{name: "raw", life: b.rawLifecycle(name, fs, b.cfg.Size), dir: b.rawMount(name)})
}

// ioMode sets up every side's volume, writes fio's file on each, then runs
// the jobs round after round, the sides taking turns at going first.
func (b *bench) ioMode(ctx context.Context, fs string) (rep *IOReport, err error) {
	sides := b.ioSides(fs)
	defer func() {
		for _, s := range sides {
			if s.iops != nil { // set up
				if _, derr := s.life.down(ctx); derr != nil && err == nil {
					err = derr
				}
			}
		}
	}()
	fmt.Fprintf(b.log, "io %s: setting up %d volumes of %s, writing a %s file on each ...\n",
		fs, len(sides), formatSize(b.cfg.Size), formatSize(b.cfg.IOFileSize))
	for _, s := range sides {
		if _, err := s.life.up(ctx); err != nil {
			return nil, err
		}
		s.iops = make([][]float64, len(ioJobs))
		s.bytes = make([][]float64, len(ioJobs))
		layout := ioJob{"layout", []string{"--rw=write", "--bs=1M", "--direct=1", "--end_fsync=1"}}
		if _, _, err := b.fio(ctx, s.dir, layout, false); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	for round := range b.cfg.IORounds {
		fmt.Fprintf(b.log, "io %s: round %d of %d ...\n", fs, round+1, b.cfg.IORounds)
		for j, job := range ioJobs {
			for k := range sides {
				s := sides[(k+round*len(ioJobs)+j)%len(sides)]
				iops, bps, err := b.fio(ctx, s.dir, job, true)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", s.name, job.Name, err)
				}
				s.iops[j] = append(s.iops[j], iops)
				s.bytes[j] = append(s.bytes[j], bps)
			}
		}
	}
	return b.ioReport(fs, sides), nil
}

func (b *bench) ioReport(fs string, sides []*ioSide) *IOReport {
	rep := &IOReport{FS: fs, SizeBytes: b.cfg.Size, FileBytes: b.cfg.IOFileSize,
		Rounds: b.cfg.IORounds, RuntimeS: b.cfg.IORuntime.Seconds()}
	raw := sides[len(sides)-1]
	for j, job := range ioJobs {
		jr := IOJobReport{Job: job.Name}
		for _, s := range sides {
			st := IOSideStat{Side: s.name, IOPS: s.iops[j], MedianIOPS: median(s.iops[j]), MedianMiBs: median(s.bytes[j]) / mib}
			if s != raw {
				ratios := make([]float64, len(s.iops[j]))
				for r, iops := range s.iops[j] {
					ratios[r] = iops / raw.iops[j][r]
				}
				st.Ratio = median(ratios)
				ok := st.Ratio >= ioTargetRatio
				st.WithinTarget = &ok
			}
			jr.Sides = append(jr.Sides, st)
		}
		rep.Jobs = append(rep.Jobs, jr)
	}
	return rep
}

// median is the middle of xs, or the mean of the two middle ones: the
// machine's other work makes outliers.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	return (s[(n-1)/2] + s[n/2]) / 2
}

// fio runs one job on a file in dir and returns its operations and bytes
// per second, reads and writes together. Timed jobs run for --runtime
// after a warm-up of a fifth of it; an untimed one does its --file-size
// once.
func (b *bench) fio(ctx context.Context, dir string, job ioJob, timed bool) (iops, bps float64, err error) {
	args := []string{"fio", "--output-format=json", "--name=" + strings.ReplaceAll(job.Name, " ", "-"),
		"--filename=" + filepath.Join(dir, "fio.dat"), "--size=" + strconv.FormatInt(b.cfg.IOFileSize, 10)}
	if timed {
		secs := int(b.cfg.IORuntime / time.Second)
		args = append(args, "--time_based", "--runtime="+strconv.Itoa(secs), "--ramp_time="+strconv.Itoa(secs/5))
	}
	out, err := execute(ctx, append(args, job.Args...)...)
	if err != nil {
		return 0, 0, err
	}
	var res struct {
		Jobs []struct {
			Error       int `json:"error"`
			Read, Write struct {
				IOPS    float64 `json:"iops"`
				BwBytes float64 `json:"bw_bytes"`
			}
		} `json:"jobs"`
	}
	// fio may print notes before its JSON.
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, 0, fmt.Errorf("fio output: %w", err)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		return 0, 0, fmt.Errorf("fio: %d jobs in its output, error %v", len(res.Jobs), res.Jobs)
	}
	r := res.Jobs[0]
	iops, bps = r.Read.IOPS+r.Write.IOPS, r.Read.BwBytes+r.Write.BwBytes
	if timed && iops <= 0 {
		return 0, 0, fmt.Errorf("fio measured no I/O")
	}
	return iops, bps, nil
}

// printIO prints one table per filesystem.
func printIO(w io.Writer, c config, reps []IOReport) {
	for _, r := range reps {
		fmt.Fprintf(w, "\nio %s (%s): %s volume, %s fio file, %d round(s) of %.0fs per job, sides alternating\n",
			r.FS, c.Backend, formatSize(r.SizeBytes), formatSize(r.FileBytes), r.Rounds, r.RuntimeS)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  job\tside\t  median\t     min\t     max\t   MiB/s\tratio")
		for _, j := range r.Jobs {
			for i, s := range j.Sides {
				job, ratio := "", ""
				if i == 0 {
					job = j.Job
				}
				if s.WithinTarget != nil {
					ratio = fmt.Sprintf("%.2f", s.Ratio)
					if !*s.WithinTarget {
						ratio += " (< " + strconv.FormatFloat(ioTargetRatio, 'f', 2, 64) + ")"
					}
				}
				fmt.Fprintf(tw, "  %s\t%s\t%8.0f\t%8.0f\t%8.0f\t%8.1f\t%s\n", job, s.Side,
					s.MedianIOPS, slices.Min(s.IOPS), slices.Max(s.IOPS), s.MedianMiBs, ratio)
			}
		}
		tw.Flush()
	}
}
