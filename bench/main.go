// Command bench measures the swarm-csi driver against the raw tools it
// replaces (truncate, losetup, mkfs, mount, ...): the full volume lifecycle,
// sequentially and in parallel, plus the driver's resident memory with many
// volumes staged.
//
//	go run ./bench [--volumes 20] [--size 1GiB] [--fs ext4] [--parallel 8] [--json] [--quick]
//	go run ./bench --backend hcloud [--action-delay 0s,1s] [--other-volumes 1000] [--volumes 20] ...
//	go run ./bench --backend rbd [--volumes 20] ...
//	go run ./bench --store 20000 [--fill-parallel 1] [--volumes 20] ...
//	go run ./bench --store 20000 --alternate [--rounds 200] [--backend loop|rbd] [--fill driver|index] [--fill-parallel 1]
//	go run ./bench --io [--backend loop|rbd] [--fs ext4] [--runtime 4s] [--rounds 5] [--direct-io true,false]
//
// Driver and raw rounds alternate (per volume, or per batch of --parallel
// volumes) so machine noise hits both alike. A volume's lifecycle time is the
// sum of its steps. The target is a driver/raw lifecycle ratio at p50 for
// ext4 of at most 1.0 one at a time and 1.3 with --parallel in flight; a
// miss is reported, never an exit status.
//
// With --backend hcloud it runs the driver's hcloud backend against the
// fake Hetzner Cloud API (package fakecloud) in this process, at each of
// the --action-delay durations its actions take, and reports the
// lifecycle's time and its API requests (fewer is better: the API allows
// 3600 an hour): of the first lifecycle after the driver started, of
// sequential lifecycles, of the same with --other-volumes more volumes in
// the project, and of parallel ones. There is no raw side: the raw tools
// have no cloud to call.
//
// With --backend rbd it starts a throwaway Ceph cluster
// (scripts/ceph-cluster), runs the driver's rbd backend attaching through
// rbd-fuse (this machine's kernel has neither rbd nor nbd), and compares it
// with the same work done by hand: rbd create, rbd-fuse, losetup, mkfs,
// mount, and back. The target there is a ratio <= 1.2 at p50.
//
// With --io it measures the I/O path instead of the lifecycle: fio jobs
// (4k random writes with an fsync each, 1M sequential direct writes, 4k
// random direct reads at depth 1 and 16, a 70/30 random mix) on a volume
// staged and published by the driver and on the same kind of disk
// attached by hand (an image of the same size on the same filesystem,
// losetup, mkfs, mount; for rbd, through rbd-fuse), for ext4 and xfs
// unless --fs is given. The sides take turns job by job. The target is a
// driver/raw ratio >= 0.95 in operations per second for every job (the
// median of the rounds' ratios). With --direct-io true,false the loop
// backend's volumes are measured with each setting of their directIO
// parameter.
//
// With --store N it first fills the store with N volumes, created through
// the driver one at a time, or --fill-parallel at a time (each CreateVolume
// timed), restarts the driver
// on them (timed until it serves), times the per-volume calls the
// lifecycle has not (expand, snapshot create and delete) with the
// listings and GetCapacity, and then measures as usual: the per-step
// tables with N other volumes in the store. The filler volumes are 16MiB
// sparse images, never staged.
//
// With --store N --alternate it starts no driver: in this process, it
// makes two controllers of the backend, one on an empty store and one on
// a store it fills with N volumes (through the controller, or for rbd by
// default their records written straight into the index), every 50th
// attached to another node, and runs --rounds rounds alternating between
// them, each one volume's controller calls (create, publish, unpublish,
// expand, snapshot create and delete, a ListVolumes page of 100, delete).
// It prints each call's p50 on both stores and their ratio; the target
// is at most 1.2.
//
// It needs root and loop devices. Everything it creates lives in one temp
// dir (under --dir) and is removed at the end, also on error or Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

type config struct {
	ioConfig // --io (io.go)

	Backend    string `json:"backend"`
	Driver     string `json:"driver,omitempty"`
	Dir        string `json:"dir"`
	Volumes    int    `json:"volumes"`
	Size       int64  `json:"size_bytes"`
	FS         string `json:"fs"`
	Parallel   int    `json:"parallel"`
	RSSVolumes int    `json:"rss_volumes"`
	RSSSize    int64  `json:"rss_size_bytes"`
	// ActionDelays are how long the fake cloud's actions take, one round
	// each (hcloud).
	ActionDelays durations `json:"action_delays_ns,omitempty"`
	// OtherVolumes are the volumes of the cluster in the project during
	// the crowded round (hcloud).
	OtherVolumes int `json:"other_volumes,omitempty"`
	// Store is how many volumes fill the store before measuring (--store;
	// nil: none, and no store figures).
	Store *int `json:"store,omitempty"`
	// FillParallel is how many CreateVolume calls fill the store at once
	// (--fill-parallel).
	FillParallel int `json:"fill_parallel,omitempty"`
	// Alternate compares, in this process, an empty store with one of
	// Store volumes, AltRounds rounds each (--alternate, alternate.go);
	// Fill is how the volumes are made: "driver" or (rbd) "index".
	Alternate bool   `json:"alternate,omitempty"`
	AltRounds int    `json:"alt_rounds,omitempty"`
	Fill      string `json:"fill,omitempty"`
}

func defaultConfig() config {
	return config{
		Backend:      "loop",
		Dir:          "/var/tmp",
		Volumes:      20,
		Size:         gib,
		FS:           "ext4",
		Parallel:     8,
		RSSVolumes:   100,
		FillParallel: 1,
		RSSSize:      64 * mib,
	}
}

// hcloudDefaults adapts the defaults to the hcloud backend, keeping
// explicitly set flags: its volumes are 10 GiB at least.
func (c *config) hcloudDefaults(explicit map[string]bool) {
	if !explicit["size"] {
		c.Size = 10 * gib
	}
	if !explicit["action-delay"] {
		c.ActionDelays = durations{0, time.Second}
	}
	if !explicit["other-volumes"] {
		c.OtherVolumes = 1000
	}
}

// rbdDefaults adapts the defaults to the rbd backend, keeping explicitly
// set flags: the memory figure with 20 volumes, each an rbd-fuse process
// of its own besides the driver.
func (c *config) rbdDefaults(explicit map[string]bool, quick bool) {
	if !explicit["rss-volumes"] && !quick {
		c.RSSVolumes = 20
	}
}

// alternateDefaults sets what --alternate needs, keeping explicitly set
// flags: 200 rounds (5 with --quick) and, for rbd, records written
// straight into the index (through the driver, 20,000 volumes take
// about 800 s).
func (c *config) alternateDefaults(explicit map[string]bool, quick bool) {
	c.AltRounds = c.IORounds // --rounds
	if !explicit["rounds"] {
		c.AltRounds = 200
		if quick {
			c.AltRounds = 5
		}
	}
	if !explicit["fill"] {
		c.Fill = "driver"
		if c.Backend == "rbd" {
			c.Fill = "index"
		}
	}
}

// applyQuick shrinks the run for a smoke test, keeping explicitly set flags.
func (c *config) applyQuick(explicit map[string]bool) {
	if !explicit["volumes"] {
		c.Volumes = 4
	}
	if !explicit["rss-volumes"] {
		c.RSSVolumes = 4
	}
}

func (c *config) validate() error {
	switch {
	case c.Backend != "loop" && c.Backend != "hcloud" && c.Backend != "rbd":
		return fmt.Errorf("--backend %q: want loop, rbd or hcloud", c.Backend)
	case c.Backend == "hcloud" && c.Size < 10*gib:
		return fmt.Errorf("--size %s: Hetzner Cloud volumes are 10GiB at least", formatSize(c.Size))
	case c.Backend == "hcloud" && len(c.ActionDelays) == 0:
		return fmt.Errorf("--action-delay: want at least one duration")
	case slices.ContainsFunc(c.ActionDelays, func(d time.Duration) bool { return d < 0 }):
		return fmt.Errorf("--action-delay %s: want 0 or more", c.ActionDelays)
	case c.Store != nil && c.Backend == "hcloud":
		return fmt.Errorf("--store: for hcloud, use --other-volumes")
	case c.OtherVolumes < 0:
		return fmt.Errorf("--other-volumes %d: want 0 or more", c.OtherVolumes)
	case c.FS != "ext4" && c.FS != "xfs":
		return fmt.Errorf("--fs %q: want ext4 or xfs", c.FS)
	case c.FS == "xfs" && c.Size < 300*mib:
		return fmt.Errorf("--size %s: xfs needs at least 300MiB", formatSize(c.Size))
	case c.Size <= 0 || c.RSSSize <= 0:
		return fmt.Errorf("sizes must be positive")
	case c.Alternate && (c.Store == nil || c.IO || c.Backend == "hcloud"):
		return fmt.Errorf("--alternate: with --store N, for loop or rbd, without --io")
	case c.Alternate && c.AltRounds < 1:
		return fmt.Errorf("--rounds %d: want 1 or more", c.AltRounds)
	case c.Alternate && c.Fill != "driver" && (c.Fill != "index" || c.Backend != "rbd"):
		return fmt.Errorf("--fill %q: want driver, or index for rbd", c.Fill)
	case c.Volumes < 1 || c.Parallel < 1 || c.RSSVolumes < 0 || c.FillParallel < 1:
		return fmt.Errorf("--volumes, --parallel and --fill-parallel must be >= 1, --rss-volumes >= 0")
	}
	return c.validateIO()
}

func main() {
	cfg := defaultConfig()
	var quick, asJSON bool
	flag.StringVar(&cfg.Backend, "backend", cfg.Backend, "loop or rbd (against the raw tools), or hcloud (on the fake Hetzner Cloud API)")
	flag.Var(&cfg.ActionDelays, "action-delay", "hcloud: how long the fake cloud's actions take, comma-separated for a round each (default 0s,1s)")
	flag.IntVar(&cfg.OtherVolumes, "other-volumes", cfg.OtherVolumes, "hcloud: volumes of the cluster in the project during the crowded round (default 1000; 0 skips it)")
	flag.Var(storeFlag{&cfg.Store}, "store", "fill the store with N volumes through the driver before measuring, and time that, a restart on them and the calls beside the lifecycle")
	flag.IntVar(&cfg.FillParallel, "fill-parallel", cfg.FillParallel, "--store: CreateVolume calls in flight while filling the store")
	flag.BoolVar(&cfg.Alternate, "alternate", false, "--store: compare, in this process, the controller's calls on an empty store and on one of N volumes, rounds alternating")
	flag.StringVar(&cfg.Fill, "fill", "", "--alternate: fill the store through the driver, or write the records straight into the index (rbd; its default)")
	flag.StringVar(&cfg.Driver, "driver", "", "driver binary (default: build ./cmd/swarm-csi)")
	flag.StringVar(&cfg.Dir, "dir", cfg.Dir, "parent of the run's temp dir, which holds the driver data dir, raw files and mounts")
	flag.IntVar(&cfg.Volumes, "volumes", cfg.Volumes, "volumes per mode and side")
	flag.Var((*byteSize)(&cfg.Size), "size", "volume size, e.g. 1GiB or 512MiB")
	flag.StringVar(&cfg.FS, "fs", cfg.FS, "filesystem: ext4 or xfs (xfs needs --size >= 300MiB)")
	flag.IntVar(&cfg.Parallel, "parallel", cfg.Parallel, "volumes in flight in parallel mode")
	flag.IntVar(&cfg.RSSVolumes, "rss-volumes", cfg.RSSVolumes, "volumes staged and published for the memory figure (0 skips it)")
	flag.Var((*byteSize)(&cfg.RSSSize), "rss-size", "size of the ext4 volumes for the memory figure")
	cfg.ioFlags()
	flag.BoolVar(&quick, "quick", false, "small run (4 volumes) unless --volumes/--rss-volumes are given")
	flag.BoolVar(&asJSON, "json", false, "print the figures as JSON on stdout (tables go to stderr)")
	flag.Parse()
	explicit := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if quick {
		cfg.applyQuick(explicit)
	}
	if cfg.IO {
		cfg.ioDefaults(explicit, quick)
	}
	if cfg.Alternate {
		cfg.alternateDefaults(explicit, quick)
	}
	switch cfg.Backend {
	case "hcloud":
		cfg.hcloudDefaults(explicit)
	case "rbd":
		cfg.rbdDefaults(explicit, quick)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the process without cleanup
	}()

	rep, err := run(ctx, cfg, os.Stderr)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	tables := os.Stdout
	if asJSON {
		tables = os.Stderr
	}
	rep.print(tables)
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

// durations is a flag value: comma-separated durations.
type durations []time.Duration

func (d *durations) String() string {
	s := make([]string, len(*d))
	for i, x := range *d {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (d *durations) Set(v string) error {
	*d = nil
	for _, f := range strings.Split(v, ",") {
		x, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		*d = append(*d, x)
	}
	return nil
}
