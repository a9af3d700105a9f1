//go:build ceph && cgo

package cephfs

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/node"
)

// BenchmarkFigures prints the cephfs backend's figures on the throwaway
// cluster: CreateVolume, NodePublishVolume (the first, which mounts) and
// DeleteVolume latencies, and write throughput through a published volume
// against a plain ceph-fuse mount of the same subvolume: sequential
// (64 MiB, one fsync), fsync-heavy small files (4 KiB, fsync each), and
// two writers on two mounts at once against one. Rates are medians; a
// ratio is the geometric mean of paired rounds' ratios (see ioBench).
//
//	go test -tags ceph,pacific -run '^$' -bench Figures -benchtime 1x ./pkg/backend/cephfs
func BenchmarkFigures(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := realBackendB(b, "figures")
	ns, err := be.ForNode("fig-node")
	if err != nil {
		b.Fatal(err)
	}
	dir, _ := os.MkdirTemp(testRoot, "fig-")
	srv, err := node.New(ctx, ns, node.NewMounter(), node.Config{NodeID: "fig-node", StateDir: filepath.Join(dir, "state")})
	if err != nil {
		b.Fatal(err)
	}
	c := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	const n = 10
	var create, publish, unpublish, del []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		v, err := be.CreateVolume(ctx, backend.VolumeSpec{Name: fmt.Sprintf("fig-%d", i), CapacityBytes: backend.GiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
		create = append(create, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		staging, target := filepath.Join(dir, "staged", v.ID), filepath.Join(dir, "published", v.ID)
		start = time.Now()
		if _, err := srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.ID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
			b.Fatal(err)
		}
		publish = append(publish, time.Since(start))
		if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if _, err := srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.ID, TargetPath: target}); err != nil {
			b.Fatal(err)
		}
		unpublish = append(unpublish, time.Since(start))
		start = time.Now()
		if err := be.DeleteVolume(ctx, v.ID); err != nil {
			b.Fatal(err)
		}
		del = append(del, time.Since(start))
	}
	fmt.Printf("cephfs, %d volumes: p50 create %v, publish (ceph-fuse mount and bind) %v, last unpublish (unmount, ceph-fuse ended) %v, delete %v\n",
		n, p50(create), p50(publish), p50(unpublish), p50(del))

	// Throughput: one volume published through the driver, against plain
	// ceph-fuse mounts of the same subvolume.
	v, err := be.CreateVolume(ctx, backend.VolumeSpec{Name: "fig-io", CapacityBytes: 4 * backend.GiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil {
		b.Fatal(err)
	}
	defer be.DeleteVolume(context.Background(), v.ID)
	r, err := be.readVolume(ctx, v.ID)
	if err != nil {
		b.Fatal(err)
	}
	w := &ioBench{b: b, ctx: ctx, be: be, ns: ns, srv: srv, c: c, id: v.ID, path: r.Path,
		staging: filepath.Join(dir, "staged", "io"), target: filepath.Join(dir, "published", "io"),
		plain: filepath.Join(dir, "plain"), plain2: filepath.Join(dir, "plain2")}
	w.run()
}

// ioBench compares writes through a volume published by the driver with
// writes through a plain ceph-fuse mount of the same subvolume, and, as
// the measure of what the machine can resolve, a second plain mount with
// the first. On a two-core machine running the cluster too, two identical
// mounts differ by 10% from one write to the next, and a ceph-fuse keeps
// a few percent of its own speed for as long as it runs (its threads'
// places, its files' placement in the pool). So the figures come from
// many short rounds in blocks: every block mounts afresh (the driver's
// publish, and plain mounts in the other order every other block), every
// round lets each mount write in turn, in an order that rotates, to
// files that rotate among the mounts. A ratio is the geometric mean of the
// rounds' paired ratios.
type ioBench struct {
	b                              *testing.B
	ctx                            context.Context
	be                             *Backend
	ns                             *NodeSide
	srv                            *node.Server
	c                              *csi.VolumeCapability
	id, path                       string
	staging, target, plain, plain2 string
}

const (
	ioBlocks = 8
	ioRounds = 6
	seqSize  = 64 << 20
	fileSize = 4 << 10
	files    = 100
)

func (w *ioBench) run() {
	b := w.b
	mounts := []string{w.target, w.plain, w.plain2}
	// The sequential files exist before the first round, so that a round
	// measures writing (and fsync), not allocating, and leaves nothing for
	// the pool to purge while the next round runs.
	w.mount(0)
	for k := range mounts {
		if err := writeFull(filepath.Join(w.target, fmt.Sprintf("seq-%d", k)), seqSize); err != nil {
			b.Fatal(err)
		}
	}
	seq, small := make([][]float64, len(mounts)), make([][]float64, len(mounts))
	for blk := 0; blk < ioBlocks; blk++ {
		if blk > 0 {
			w.mount(blk)
		}
		for rd := 0; rd < ioRounds; rd++ {
			i := blk*ioRounds + rd
			for j := range mounts {
				k := (i + j) % len(mounts)
				start := time.Now()
				if err := writeFull(filepath.Join(mounts[k], fmt.Sprintf("seq-%d", (i+2*j)%len(mounts))), seqSize); err != nil {
					b.Fatal(err)
				}
				seq[k] = append(seq[k], float64(seqSize)/time.Since(start).Seconds()/1e6)
			}
			for j := range mounts {
				k := (i + j) % len(mounts)
				small[k] = append(small[k], smallFiles(b, filepath.Join(mounts[k], fmt.Sprintf("small-%d-%d", k, i)), files))
			}
		}
		w.unmount()
	}
	n := ioBlocks * ioRounds
	fmt.Printf("sequential write of 64 MiB + fsync, %d rounds over %d fresh mounts: driver %.1f MB/s, plain ceph-fuse %.1f MB/s (%.2fx; a second plain mount against the first: %.2fx)\n",
		n, ioBlocks, med(seq[0]), med(seq[1]), paired(seq[0], seq[1]), paired(seq[2], seq[1]))
	fmt.Printf("4 KiB files with an fsync each, %d rounds over %d fresh mounts: driver %.0f files/s, plain ceph-fuse %.0f files/s (%.2fx; a second plain mount against the first: %.2fx)\n",
		n, ioBlocks, med(small[0]), med(small[1]), paired(small[0], small[1]), paired(small[2], small[1]))

	// Two writers on two mounts (the driver's and a plain one) at once,
	// against one alone.
	w.mount(0)
	defer w.unmount()
	var one, two []float64
	for rd := 0; rd < ioRounds; rd++ {
		start := time.Now()
		if err := writeFull(filepath.Join(w.target, "seq-0"), seqSize); err != nil {
			b.Fatal(err)
		}
		one = append(one, float64(seqSize)/time.Since(start).Seconds()/1e6)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start = time.Now()
		for w, p := range []string{filepath.Join(w.target, "seq-1"), filepath.Join(w.plain, "seq-2")} {
			wg.Add(1)
			go func() { defer wg.Done(); errs[w] = writeFull(p, seqSize) }()
		}
		wg.Wait()
		two = append(two, float64(2*seqSize)/time.Since(start).Seconds()/1e6)
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Printf("two writers at once on two mounts, median of %d rounds: %.1f MB/s together, one alone %.1f MB/s (%.2fx)\n", ioRounds, med(two), med(one), paired(two, one))
}

// mount publishes the volume through the driver and makes the two plain
// mounts, in the other order every other block.
func (w *ioBench) mount(blk int) {
	publish := func() {
		if _, err := w.srv.NodePublishVolume(w.ctx, &csi.NodePublishVolumeRequest{VolumeId: w.id, StagingTargetPath: w.staging, TargetPath: w.target, VolumeCapability: w.c}); err != nil {
			w.b.Fatal(err)
		}
	}
	plain := func() {
		for _, p := range []string{w.plain, w.plain2} {
			w.plainFuse(p)
		}
	}
	if blk%2 == 0 {
		publish()
		plain()
	} else {
		plain()
		publish()
	}
}

// plainFuse mounts the subvolume at p with ceph-fuse as an operator
// would, with the backend's configuration file and credentials. It runs
// in a session of its own, as the driver's ceph-fuse does: with the
// kernel's autogroup scheduling a session is a CPU share of its own, and
// a ceph-fuse sharing the benchmark's would not be measured alike.
func (w *ioBench) plainFuse(p string) {
	if err := os.MkdirAll(p, 0o750); err != nil {
		w.b.Fatal(err)
	}
	cmd := exec.Command("ceph-fuse", "-c", w.be.conf, "-n", "client."+w.be.cfg.User, "--keyring", w.be.keyring, "-r", w.path, p)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		w.b.Fatalf("plain ceph-fuse: %v\n%s", err, out)
	}
}

func (w *ioBench) unmount() {
	if _, err := w.srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: w.id, TargetPath: w.target}); err != nil {
		w.b.Fatal(err)
	}
	for _, p := range []string{w.plain, w.plain2} {
		if err := w.ns.Unmount(context.Background(), "plain", p); err != nil {
			w.b.Fatal(err)
		}
	}
}

// paired is the geometric mean of the ratios xs[i]/ys[i].
func paired(xs, ys []float64) float64 {
	var s float64
	for i := range xs {
		s += math.Log(xs[i] / ys[i])
	}
	return math.Exp(s / float64(len(xs)))
}

func realBackendB(b *testing.B, group string) *Backend {
	c := sharedCluster(b)
	dir, _ := os.MkdirTemp(testRoot, "state-")
	be, err := New(Config{Monitors: c.MonHost, User: c.FSUser, Keyring: c.FSKeyring, FsName: c.FS, Group: group, StateDir: dir, Client: ClientFuse})
	if err != nil {
		b.Fatal(err)
	}
	return be
}

func smallFiles(b *testing.B, dir string, n int) float64 {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	start := time.Now()
	for i := 0; i < n; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	return float64(n) / time.Since(start).Seconds()
}

func p50(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func med(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
