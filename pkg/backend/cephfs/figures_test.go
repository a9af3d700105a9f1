//go:build ceph && cgo

package cephfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
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
// two writers on two mounts at once against one.
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

	// Throughput: one volume published through the driver, and a plain
	// ceph-fuse mount of the same subvolume.
	v, err := be.CreateVolume(ctx, backend.VolumeSpec{Name: "fig-io", CapacityBytes: 4 * backend.GiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil {
		b.Fatal(err)
	}
	defer be.DeleteVolume(context.Background(), v.ID)
	staging, target := filepath.Join(dir, "staged", "io"), filepath.Join(dir, "published", "io")
	if _, err := srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.ID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
		b.Fatal(err)
	}
	defer srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.ID, TargetPath: target})
	r, _ := be.readVolume(ctx, v.ID)
	plain := filepath.Join(dir, "plain")
	os.MkdirAll(plain, 0o750)
	if out, err := exec.Command("ceph-fuse", "-c", be.conf, "-n", "client."+be.cfg.User, "--keyring", be.keyring, "-r", r.Path, plain).CombinedOutput(); err != nil {
		b.Fatalf("plain ceph-fuse: %v\n%s", err, out)
	}
	defer ns.Unmount(context.Background(), "plain", plain)

	// Rounds alternate which mount goes first.
	const rounds = 5
	var seqDriver, seqPlain, smallDriver, smallPlain []float64
	for i := 0; i < rounds; i++ {
		for _, driverFirst := range []bool{i%2 == 0, i%2 != 0} {
			if driverFirst {
				seqDriver = append(seqDriver, seqWrite(b, filepath.Join(target, "seq-driver"), 64<<20))
				smallDriver = append(smallDriver, smallFiles(b, filepath.Join(target, fmt.Sprintf("small-driver-%d", i)), 100))
			} else {
				seqPlain = append(seqPlain, seqWrite(b, filepath.Join(plain, "seq-plain"), 64<<20))
				smallPlain = append(smallPlain, smallFiles(b, filepath.Join(plain, fmt.Sprintf("small-plain-%d", i)), 100))
			}
		}
	}
	fmt.Printf("sequential write 64 MiB + fsync, median of %d: driver %.1f MB/s, plain ceph-fuse %.1f MB/s (%.2fx)\n",
		rounds, med(seqDriver), med(seqPlain), med(seqDriver)/med(seqPlain))
	fmt.Printf("4 KiB files with fsync each, median of %d: driver %.0f files/s, plain ceph-fuse %.0f files/s (%.2fx)\n",
		rounds, med(smallDriver), med(smallPlain), med(smallDriver)/med(smallPlain))

	// Two writers on two mounts (the driver's and the plain one) at once.
	one := seqWrite(b, filepath.Join(target, "one"), 64<<20)
	var wg sync.WaitGroup
	start := time.Now()
	for _, p := range []string{filepath.Join(target, "two-a"), filepath.Join(plain, "two-b")} {
		wg.Add(1)
		go func() { defer wg.Done(); seqWrite(b, p, 64<<20) }()
	}
	wg.Wait()
	both := float64(2*64<<20) / time.Since(start).Seconds() / 1e6
	fmt.Printf("two writers at once on two mounts: %.1f MB/s together, one alone %.1f MB/s (%.2fx)\n", both, one, both/one)
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

func seqWrite(b *testing.B, path string, n int) float64 {
	start := time.Now()
	if err := writeFull(path, n); err != nil {
		b.Fatal(err)
	}
	mbs := float64(n) / time.Since(start).Seconds() / 1e6
	os.Remove(path)
	return mbs
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
