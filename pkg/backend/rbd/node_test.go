package rbd

import (
	"context"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

func (f *fakeCeph) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeCeph) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: %s", what)
		}
	}
}

// waitQuiet waits until f has run no command for quiet, for up to 5 s.
func waitQuiet(t *testing.T, f *fakeCeph, quiet time.Duration, what string) {
	t.Helper()
	waitFor(t, what, func() bool {
		before := f.callCount()
		time.Sleep(quiet)
		return f.callCount() == before
	})
}

func newNodeSide(t *testing.T, f *fakeCeph, every time.Duration) *NodeSide {
	t.Helper()
	n, err := newTestBackend(t, f).ForNode("node-1", ModeFuse)
	if err != nil {
		t.Fatal(err)
	}
	n.registerEvery = every
	return n
}

// A node that cannot reach Ceph at start keeps trying in the background
// only as long as the driver runs: once the context Register was given
// ends, it runs no more commands.
func TestRegisterRetriesEndWithTheDriver(t *testing.T) {
	f := newFakeCeph()
	f.down = true
	n := newNodeSide(t, f, 5*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := n.Register(ctx, "node-1"); err != nil {
		t.Fatalf("Register with Ceph unreachable: %v; want nil (it retries in the background)", err)
	}
	waitFor(t, "Register did not retry", func() bool { return f.callCount() >= 4 })
	cancel()
	waitQuiet(t, f, 100*time.Millisecond, "still running commands after the context ended")

	// At the real interval the retry waits 15 s between attempts; a
	// cancel must end that wait at once.
	slow := newNodeSide(t, f, registerRetry)
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		slow.retryRegister(ctx, "node-1")
	}()
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case <-done:
		t.Logf("retry ended %s after its context", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("the retry was still waiting 1 s after its context ended")
	}
}

// Once Ceph answers again, the background retry registers the node and
// stops.
func TestRegisterRetrySucceedsWhenCephIsBack(t *testing.T) {
	f := newFakeCeph()
	n := newNodeSide(t, f, 5*time.Millisecond)
	ctx := context.Background()
	// A volume makes the index image the node records go into.
	if _, err := n.CreateVolume(ctx, backend.VolumeSpec{Name: "db", CapacityBytes: 16 * backend.MiB, AccessMode: "SINGLE_NODE_WRITER"}); err != nil {
		t.Fatal(err)
	}
	f.setDown(true)
	if err := n.Register(ctx, "node-1"); err != nil {
		t.Fatalf("Register with Ceph unreachable: %v; want nil (it retries in the background)", err)
	}
	start := f.callCount()
	waitFor(t, "Register did not retry", func() bool { return f.callCount() >= start+2 })
	f.setDown(false)
	waitQuiet(t, f, 100*time.Millisecond, "still running commands after registering")
	var rec nodeRecord
	if err := n.index.get(ctx, n.creds, nodeKeyPrefix+"node-1", &rec); err != nil || rec.AttachMode != ModeFuse {
		t.Fatalf("node record %+v, %v; want one with attach mode %s", rec, err, ModeFuse)
	}
	if known, err := n.NodeKnown(ctx, "node-1"); err != nil || !known {
		t.Fatalf("NodeKnown(node-1) = %v, %v; want true", known, err)
	}
}
