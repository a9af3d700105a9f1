//go:build ceph && cgo

package cephfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/node"
)

// A volume shared as the replicas of one service share it, on three node
// services (each its own node id, state and ceph-fuse), without Swarm: a
// MULTI_NODE_MULTI_WRITER volume with a 64 MiB quota is published on three
// nodes; each writer writes its own file and appends lines with fsync to
// one shared file (under a lock: appendLine); a "drain" moves one writer
// to a fourth node while the other two go on; every node sees every file
// and every line; a writer past the quota gets EDQUOT; a
// MULTI_NODE_READER_ONLY publish is read-only; after the last unpublish no
// ceph-fuse and no mount is left.
func TestRealSharedVolumeOnThreeNodes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := realBackend(t, "shared")
	v, err := b.CreateVolume(ctx, backend.VolumeSpec{Name: "uploads", CapacityBytes: 64 * backend.MiB, AccessMode: "MULTI_NODE_MULTI_WRITER"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(context.Background(), v.ID) })
	dir, _ := os.MkdirTemp(testRoot, "shared-")
	type nodeRun struct {
		srv             *node.Server
		staging, target string
	}
	mw := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	nodes := map[string]*nodeRun{}
	for _, name := range []string{"node1", "node2", "node3", "node4"} {
		ns, err := b.ForNode(name)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := node.New(ctx, ns, node.NewMounter(), node.Config{NodeID: name, StateDir: filepath.Join(dir, name, "state")})
		if err != nil {
			t.Fatal(err)
		}
		nodes[name] = &nodeRun{srv: srv, staging: filepath.Join(dir, name, "staged"), target: filepath.Join(dir, name, "published")}
	}
	publish := func(n *nodeRun, c *csi.VolumeCapability) {
		t.Helper()
		if _, err := n.srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.ID, StagingTargetPath: n.staging,
			TargetPath: n.target, VolumeCapability: c}); err != nil {
			t.Fatal(err)
		}
	}
	unpublish := func(n *nodeRun) {
		t.Helper()
		if _, err := n.srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.ID, TargetPath: n.target}); err != nil {
			t.Error(err)
		}
	}
	for _, n := range nodes {
		t.Cleanup(func() { unpublish(n) })
	}

	// Writers: own file, then lines appended with fsync every 20 ms.
	type writer struct {
		stop chan struct{}
		done chan error
	}
	start := func(name string) *writer {
		w := &writer{stop: make(chan struct{}), done: make(chan error, 1)}
		n := nodes[name]
		go func() {
			if err := os.WriteFile(filepath.Join(n.target, "own-"+name), []byte(name), 0o644); err != nil {
				w.done <- err
				return
			}
			for i := 0; ; i++ {
				if err := appendLine(filepath.Join(n.target, "shared.log"), fmt.Sprintf("%s %d\n", name, i)); err != nil {
					w.done <- err
					return
				}
				select {
				case <-w.stop:
					w.done <- nil
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		return w
	}
	for _, name := range []string{"node1", "node2", "node3"} {
		publish(nodes[name], mw)
	}
	writers := map[string]*writer{}
	for _, name := range []string{"node1", "node2", "node3"} {
		writers[name] = start(name)
	}
	time.Sleep(time.Second)
	// Drain node3: its writer stops, the node unpublishes, node4 takes over.
	close(writers["node3"].stop)
	if err := <-writers["node3"].done; err != nil {
		t.Fatalf("node3's writer: %v", err)
	}
	unpublish(nodes["node3"])
	publish(nodes["node4"], mw)
	writers["node4"] = start("node4")
	time.Sleep(time.Second)
	var wg sync.WaitGroup
	for name, w := range writers {
		if name == "node3" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			close(w.stop)
			if err := <-w.done; err != nil {
				t.Errorf("%s's writer: %v", name, err)
			}
		}()
	}
	wg.Wait()

	// Every node that holds the volume sees every file and every line.
	var want map[string]int
	for _, name := range []string{"node1", "node2", "node4"} {
		n := nodes[name]
		for _, w := range []string{"node1", "node2", "node3", "node4"} {
			if b, err := os.ReadFile(filepath.Join(n.target, "own-"+w)); err != nil || string(b) != w {
				t.Errorf("%s reads own-%s: %q %v", name, w, b, err)
			}
		}
		got, err := lines(filepath.Join(n.target, "shared.log"))
		if err != nil {
			raw, _ := os.ReadFile(filepath.Join(n.target, "shared.log"))
			t.Fatalf("%v\n%q", err, raw)
		}
		if want == nil {
			want = got
			t.Logf("shared.log: %v lines per writer", got)
		} else if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s sees %v lines, node1 %v", name, got, want)
		}
	}
	if len(want) != 4 {
		t.Errorf("lines of %d writers, want 4: %v", len(want), want)
	}

	// The quota holds for every writer.
	if err := writeFull(filepath.Join(nodes["node2"].target, "big"), 128<<20); !errors.Is(err, unix.EDQUOT) {
		t.Errorf("writing past the 64 MiB quota: %v, want EDQUOT (Disk quota exceeded)", err)
	}
	os.Remove(filepath.Join(nodes["node2"].target, "big"))

	// Read-only on another node.
	ro := &csi.VolumeCapability{AccessType: mw.AccessType,
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY}}
	publish(nodes["node3"], ro)
	if err := os.WriteFile(filepath.Join(nodes["node3"].target, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write on the read-only publish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(nodes["node3"].target, "own-node4")); err != nil {
		t.Errorf("the read-only node does not see node4's file: %v", err)
	}

	for _, n := range nodes {
		unpublish(n)
	}
	for name, n := range nodes {
		if p := fusePids(n.staging); len(p) != 0 {
			t.Errorf("%s: ceph-fuse still runs: %v", name, p)
		}
		for _, p := range []string{n.staging, n.target} {
			if _, ok, _ := mountAt(p); ok {
				t.Errorf("%s: %s still mounted", name, p)
			}
		}
	}
}

// appendLine appends a line to a file shared by several nodes. Through
// ceph-fuse, O_APPEND writes at the end the kernel last knew of: appends
// from two nodes at once overwrite each other, and flock locks only within
// a node. What keeps every line: a POSIX lock (fcntl), which the MDS
// arbitrates between clients, then a stat, which brings the file's size
// up to date, then the write and its fsync before the lock goes.
func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != nil {
		return err
	}
	if _, err := f.Stat(); err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// lines counts the lines of each writer in a shared log, checking that
// each writer's numbers follow each other from 0.
func lines(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, num, ok := strings.Cut(sc.Text(), " ")
		if !ok || num != fmt.Sprint(out[name]) {
			return nil, fmt.Errorf("%s: line %q out of order (%d lines of %s before)", path, sc.Text(), out[name], name)
		}
		out[name]++
	}
	return out, sc.Err()
}
