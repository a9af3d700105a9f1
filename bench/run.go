package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// bench holds what the phases of a run share.
type bench struct {
	cfg config
	dir string // the run's temp dir: data/, raw/, mnt/, csi.sock
	drv *driver
	log io.Writer
	// ceph is the throwaway cluster of an rbd run, metrics the driver's
	// metrics address in that run.
	ceph    *cephtest.Cluster
	metrics string
	// retried counts the calls answered Aborted and made again, as a CO
	// does (hcloud: an action outlasted the driver's wait).
	retried atomic.Int64
}

// run does a whole benchmark: warm-up, sequential and parallel rounds, and
// the memory figure. It always removes what it created; the returned report
// is non-nil once the temp dir exists (its Dir field), complete only when err
// is nil.
func run(ctx context.Context, cfg config, log io.Writer) (rep *Report, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	parent, err := filepath.EvalSymlinks(cfg.Dir) // mountinfo has real paths
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "swarm-csi-bench-")
	if err != nil {
		return nil, err
	}
	rep = &Report{Config: cfg, Dir: dir}
	defer func() {
		swept, serr := sweep(dir)
		rep.Leftovers = swept
		if err != nil && len(swept) > 0 {
			err = fmt.Errorf("%w\nthe final sweep removed: %v", err, swept)
		}
		err = errors.Join(err, serr)
	}()
	for _, sub := range []string{"data", "raw", "mnt"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o750); err != nil {
			return rep, err
		}
	}

	if cfg.Alternate {
		rep.Alternate, err = alternate(ctx, cfg, dir, log)
		return rep, err
	}
	bin := cfg.Driver
	if bin == "" {
		fmt.Fprintln(log, "building driver ...")
		if bin, err = buildDriver(ctx, dir, cfg.Backend); err != nil {
			return rep, err
		}
	}
	var cloud *fakeCloud
	var ceph *cephtest.Cluster
	var args, env []string
	var metricsAddr string
	if cfg.Backend == "rbd" {
		fmt.Fprintln(log, "starting a throwaway Ceph cluster ...")
		if ceph, args, metricsAddr, err = startCeph(ctx); err != nil {
			return rep, err
		}
		defer func() { err = errors.Join(err, ceph.Stop()) }()
		fmt.Fprintf(log, "ceph cluster up in %s\n", ceph.StartTime.Round(time.Millisecond))
	}
	if cfg.Backend == "hcloud" {
		if cloud, args, env, err = startCloud(dir, cfg.ActionDelays[0]); err != nil {
			return rep, err
		}
		defer func() { err = errors.Join(err, cloud.close()) }()
	}
	drv, err := startDriver(ctx, bin, dir, args, env)
	if err != nil {
		return rep, err
	}
	defer func() {
		if ctx.Err() == nil { // a failure, not Ctrl-C: show what the driver said
			err = drv.annotate(err)
		}
		err = errors.Join(err, drv.stop())
	}()

	b := &bench{cfg: cfg, dir: dir, drv: drv, log: log, ceph: ceph, metrics: metricsAddr}
	fmt.Fprintf(log, "driver pid %d, temp dir %s\n", drv.pid(), dir)
	if cfg.Store != nil {
		restart := func() (*driver, time.Duration, error) {
			if err := drv.stop(); err != nil {
				return nil, 0, err
			}
			start := time.Now()
			d, err := startDriver(ctx, bin, dir, args, env)
			if err == nil {
				drv = d
			}
			return d, time.Since(start), err
		}
		if rep.Store, err = b.store(ctx, restart); err != nil {
			return rep, fmt.Errorf("store: %w", err)
		}
	}
	if cloud != nil {
		rep.Cloud, err = b.cloudModes(ctx, cloud)
		return rep, err
	}
	if cfg.IO {
		rep.IO, err = b.ioModes(ctx)
		return rep, err
	}
	for _, s := range b.sides() {
		if _, err := s.newLifecycle("warmup", cfg.FS, cfg.Size).run(ctx); err != nil {
			return rep, fmt.Errorf("warm-up: %w", err)
		}
	}
	for _, m := range []struct {
		name  string
		batch int
	}{{"sequential", 1}, {"parallel", cfg.Parallel}} {
		fmt.Fprintf(log, "%s: %d volumes x 2 sides ...\n", m.name, cfg.Volumes)
		mr, err := b.mode(ctx, m.name, m.batch)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", m.name, err)
		}
		rep.Modes = append(rep.Modes, *mr)
	}
	if cfg.RSSVolumes > 0 {
		fmt.Fprintf(log, "memory: %d volumes staged and published ...\n", cfg.RSSVolumes)
		if rep.RSS, err = b.rss(ctx); err != nil {
			return rep, fmt.Errorf("memory: %w", err)
		}
	}
	return rep, nil
}

// sides returns the two contenders, driver first.
func (b *bench) sides() []*side {
	return []*side{
		{name: "driver", newLifecycle: b.driverLifecycle},
		{name: "raw", newLifecycle: b.rawLifecycle},
	}
}

// mode runs cfg.Volumes lifecycles per side, batch at a time, alternating
// driver and raw batches (and which side goes first) so that machine noise
// hits both alike.
func (b *bench) mode(ctx context.Context, name string, batch int) (*ModeReport, error) {
	sides := b.sides()
	before, err := b.backendCalls(ctx)
	if err != nil {
		return nil, err
	}
	for round, start := 0, 0; start < b.cfg.Volumes; round, start = round+1, start+batch {
		n := min(batch, b.cfg.Volumes-start)
		for k := range sides {
			s := sides[(k+round)%2]
			err := s.batch(ctx, n, func(i int) *lifecycle {
				vol := fmt.Sprintf("%s-%03d", name[:3], start+i)
				return s.newLifecycle(vol, b.cfg.FS, b.cfg.Size)
			})
			if err != nil {
				return nil, err
			}
		}
	}
	after, err := b.backendCalls(ctx)
	if err != nil {
		return nil, err
	}
	m := newModeReport(name, batch, b.cfg, sides[0], sides[1])
	if after != nil {
		m.BackendCallsByName = map[string]float64{}
		for call, n := range after {
			if d := (n - before[call]) / float64(b.cfg.Volumes); d > 0 {
				m.BackendCallsByName[call] = d
				m.BackendCalls += d
			}
		}
	}
	return m, nil
}

// rss stages and publishes cfg.RSSVolumes volumes, reads the driver's memory
// once it is idle, and tears them all down.
func (b *bench) rss(ctx context.Context) (*RSSReport, error) {
	n := b.cfg.RSSVolumes
	idle, err := readRSS(b.drv.pid(), 0)
	if err != nil {
		return nil, err
	}
	ls := make([]*lifecycle, n)
	up := make([]bool, n)
	setupCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	err = forEach(n, b.cfg.Parallel, func(i int) error {
		ls[i] = b.driverLifecycle(fmt.Sprintf("rss-%03d", i), "ext4", b.cfg.RSSSize)
		if _, err := ls[i].up(setupCtx); err != nil {
			cancel()
			return err
		}
		up[i] = true
		return nil
	})
	var rep *RSSReport
	if err == nil {
		select {
		case <-time.After(2 * time.Second):
			if rep, err = readRSS(b.drv.pid(), n); err == nil {
				rep.IdleKiB = idle.VmRSSKiB
				rep.AttachProcesses, rep.AttachKiB, err = attachRSS(b.dir)
			}
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	downErr := forEach(n, b.cfg.Parallel, func(i int) error {
		if !up[i] {
			return nil
		}
		_, err := ls[i].down(ctx)
		return err
	})
	return rep, errors.Join(err, downErr)
}
