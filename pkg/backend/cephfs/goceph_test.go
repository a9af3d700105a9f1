//go:build ceph && cgo

package cephfs

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestGocephNoMonitor: while no monitor answers, the calls wait together
// for one attempt to connect, each no longer than its context allows, and
// the attempt that failed is not kept: the next call makes another.
func TestGocephNoMonitor(t *testing.T) {
	b, err := New(Config{Monitors: "127.0.0.1:9", User: "test", Key: "AQBVdkJpAAAAABAAtfQEGcq5JXH5xZ4Pu5ABCQ==",
		FsName: "cephfs", StateDir: t.TempDir(), CallTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	g := b.cl.(*goceph)
	mount := b.cfg.CallTimeout // client_mount_timeout

	start := time.Now()
	short, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { _, errs[i] = g.List(short, "g") })
	}
	wg.Wait()
	for _, err := range errs {
		if !isKind(err, KindUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a call with 1 s: %v, want KindUnreachable at its context's end", err)
		}
	}
	// A call now joins the attempt under way: it answers when that ends,
	// not after attempts of the calls before it in turn.
	_, err = g.List(context.Background(), "g")
	took := time.Since(start)
	t.Logf("no monitor: the attempt's answer after %v: %v", took.Round(time.Millisecond), err)
	if !isKind(err, KindUnreachable) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want KindUnreachable from connecting", err)
	}
	if took > mount+2*time.Second {
		t.Errorf("answered after %v, the attempt takes %v", took, mount)
	}
	// The next call makes an attempt of its own.
	start = time.Now()
	_, err = g.List(context.Background(), "g")
	took = time.Since(start)
	if !isKind(err, KindUnreachable) || took < mount-time.Second {
		t.Errorf("the next call: %v after %v, want a new attempt of about %v", err, took.Round(time.Millisecond), mount)
	}
}
