package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// fillerSize is the size of the volumes --store fills the store with: the
// smallest a loop volume is. Their images are sparse and never staged.
const fillerSize = 16 * mib

// StoreReport is what --store N measures besides the lifecycle tables, run
// on a store holding N other volumes: their creation, a restart of the
// driver on them, and the per-volume calls the lifecycle has not.
type StoreReport struct {
	Volumes int `json:"volumes"`
	// Create is the CreateVolume of each of the N volumes, one at a time
	// as Swarm sends them, or Parallel at a time; FillSeconds all of them.
	Create      Stat    `json:"create"`
	Parallel    int     `json:"parallel"`
	FillSeconds float64 `json:"fill_s"`
	// RestartMs is from the driver's start on the filled store until it
	// answers Probe and its capabilities (polled every 50 ms).
	RestartMs float64 `json:"restart_ms"`
	// Calls are timed on volumes of their own, --volumes of each:
	// ControllerExpandVolume, CreateSnapshot, DeleteSnapshot, a
	// ListVolumes and a ListSnapshots page of 100 entries, GetCapacity.
	Calls []Stat `json:"calls"`
}

// storeFlag is the --store flag: absent (nil) or a number of volumes.
type storeFlag struct{ n **int }

func (f storeFlag) String() string {
	if f.n == nil || *f.n == nil {
		return ""
	}
	return strconv.Itoa(**f.n)
}

func (f storeFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a number of volumes, 0 or more")
	}
	*f.n = &n
	return nil
}

// store fills the store, restarts the driver on it with restart, and
// times the calls beside the lifecycle.
func (b *bench) store(ctx context.Context, restart func() (*driver, time.Duration, error)) (*StoreReport, error) {
	fmt.Fprintf(b.log, "store: %d volumes ...\n", *b.cfg.Store)
	rep, err := b.fillStore(ctx)
	if err != nil {
		return nil, err
	}
	d, took, err := restart()
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	b.drv = d
	rep.RestartMs = float64(took) / float64(time.Millisecond)
	fmt.Fprintf(b.log, "driver restarted, pid %d\n", b.drv.pid())
	if rep.Calls, err = b.storeCalls(ctx); err != nil {
		return nil, err
	}
	return rep, nil
}

// fillStore creates cfg.Store volumes through the driver, one at a time
// or cfg.FillParallel at a time, and times each.
func (b *bench) fillStore(ctx context.Context) (*StoreReport, error) {
	n := *b.cfg.Store
	rep := &StoreReport{Volumes: n, Parallel: b.cfg.FillParallel}
	ds := make([]time.Duration, n)
	var next, done atomic.Int64
	errs := make([]error, b.cfg.FillParallel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range b.cfg.FillParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				t := time.Now()
				if _, err := b.createVolume(ctx, fmt.Sprintf("store-%06d", i)); err != nil {
					errs[w] = fmt.Errorf("filling the store, volume %d: %w", i, err)
					cancel()
					return
				}
				ds[i] = time.Since(t)
				if d := done.Add(1); d%int64(max(n/10, 1)) == 0 {
					fmt.Fprintf(b.log, "  %d volumes in %.1fs\n", d, time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.FillSeconds = time.Since(start).Seconds()
	rep.Create = stat("CreateVolume", ds)
	// What follows is measured once the filling is on disk, not while
	// the kernel writes it back.
	syscall.Sync()
	return rep, nil
}

func (b *bench) createVolume(ctx context.Context, name string) (*csi.Volume, error) {
	r, err := b.drv.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: fillerSize},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: b.cfg.FS}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	})
	return r.GetVolume(), err
}

// storeCalls times, on cfg.Volumes volumes of their own, the per-volume
// calls that the lifecycle lacks, and the listings and capacity figure,
// whose cost must not grow with the store either.
func (b *bench) storeCalls(ctx context.Context) ([]Stat, error) {
	names := []string{"ControllerExpandVolume", "CreateSnapshot", "DeleteSnapshot", "ListVolumes (100)", "ListSnapshots (100)", "GetCapacity"}
	times := make([][]time.Duration, len(names))
	c := b.drv.ctrl
	for i := range b.cfg.Volumes {
		vol, err := b.createVolume(ctx, fmt.Sprintf("probe-%03d", i))
		if err != nil {
			return nil, err
		}
		var snap *csi.Snapshot
		calls := []func() error{
			func() error {
				_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
					VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * fillerSize}})
				return err
			},
			func() error {
				r, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("probe-snap-%03d", i), SourceVolumeId: vol.GetVolumeId()})
				snap = r.GetSnapshot()
				return err
			},
			func() error {
				_, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
				return err
			},
			func() error {
				_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 100})
				return err
			},
			func() error {
				_, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 100})
				return err
			},
			func() error {
				_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{})
				return err
			},
		}
		for k, call := range calls {
			start := time.Now()
			if err := call(); err != nil {
				return nil, fmt.Errorf("%s: %w", names[k], err)
			}
			times[k] = append(times[k], time.Since(start))
		}
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
			return nil, err
		}
	}
	stats := make([]Stat, len(names))
	for k, name := range names {
		stats[k] = stat(name, times[k])
	}
	return stats, nil
}

func (r *StoreReport) print(w io.Writer) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\nstore: %d volumes created through the driver, %d at a time, in %.1fs, CreateVolume p50 %.1f ms, p95 %.1f ms\n",
		r.Volumes, max(r.Parallel, 1), r.FillSeconds, r.Create.P50ms, r.Create.P95ms)
	fmt.Fprintf(w, "  driver restarted on them: serving after %.0f ms\n", r.RestartMs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  call\t  n\t  p50 ms\t  p95 ms")
	for _, st := range r.Calls {
		fmt.Fprintf(tw, "  %s\t%3d\t%8.1f\t%8.1f\n", st.Step, st.Samples, st.P50ms, st.P95ms)
	}
	tw.Flush()
}
