package loop

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// cancelAfter is a context whose Err reports Canceled from its n-th call on.
type cancelAfter struct {
	context.Context
	calls, n int
}

func (c *cancelAfter) Err() error {
	c.calls++
	if c.calls >= c.n {
		return context.Canceled
	}
	return nil
}

// withoutReflink makes copies take the chunked path, copyChunk small, for
// the rest of the test.
func withoutReflink(t *testing.T, chunk int64) {
	oldReflink, oldChunk := reflink, copyChunk
	reflink = func(_, _ *os.File) error { return errors.ErrUnsupported }
	copyChunk = chunk
	t.Cleanup(func() { reflink, copyChunk = oldReflink, oldChunk })
}

// A copy stops when its context ends and keeps what it copied; the next
// build of the same image goes on from there and makes a whole copy.
func TestBuildImageCancelledResumes(t *testing.T) {
	const chunk = 64 << 10
	withoutReflink(t, chunk)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := pattern(8*chunk, 3)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	names := func() []string {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := buildImage(cancelled, dst, src, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("buildImage with an ended context = %v, want context.Canceled", err)
	}
	if got := names(); !slices.Equal(got, []string{"src.img"}) {
		t.Fatalf("after a build cancelled before it began: %v, want only the source", got)
	}

	// The first check is buildImage's own; the copy stops after two chunks.
	first := &cancelAfter{Context: context.Background(), n: 4}
	if err := buildImage(first, dst, src, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("buildImage cancelled between chunks = %v, want context.Canceled", err)
	}
	if first.calls != first.n {
		t.Fatalf("the context was checked %d times, want %d: the copy went on after it ended", first.calls, first.n)
	}
	if got := names(); !slices.Equal(got, []string{"dst.img.tmp", "src.img"}) {
		t.Fatalf("after a build cancelled between chunks: %v, want the source and the partial copy", got)
	}
	if got := readAll(t, partial(dst)); !bytes.Equal(got, data[:2*chunk]) {
		t.Fatalf("the partial copy holds %d bytes, want the first two chunks of the source", len(got))
	}

	// The next build copies the six chunks that are left.
	second := &cancelAfter{Context: context.Background(), n: 1 << 30}
	if err := buildImage(second, dst, src, 0); err != nil {
		t.Fatal(err)
	}
	if second.calls != 1+6 {
		t.Fatalf("the resumed build checked the context %d times, want 7 (itself and the six chunks left)", second.calls)
	}
	if got := readAll(t, dst); !bytes.Equal(got, data) {
		t.Fatalf("resumed copy differs from its source (%d bytes, want %d)", len(got), len(data))
	}
	if got := names(); !slices.Equal(got, []string{"dst.img", "src.img"}) {
		t.Fatalf("after the resumed build: %v, want the source and the copy", got)
	}
}

// What a partial copy holds past its last whole chunk (a chunk a crash cut
// short) is copied again.
func TestBuildImageResumesAfterCutChunk(t *testing.T) {
	const chunk = 64 << 10
	withoutReflink(t, chunk)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := pattern(4*chunk, 5)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	cut := append(append([]byte{}, data[:chunk]...), make([]byte, chunk/2)...) // a chunk and half of a zeroed one
	if err := os.WriteFile(partial(dst), cut, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := buildImage(context.Background(), dst, src, 0); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, dst); !bytes.Equal(got, data) {
		t.Fatal("a copy resumed over a cut chunk differs from its source")
	}
}

// A clone cut short by its context, then given up (the volume deleted),
// leaves no partial copy behind.
func TestDeleteVolumeRemovesPartialCopy(t *testing.T) {
	const chunk = 64 << 10
	withoutReflink(t, chunk)
	b, _ := newBackend(t)
	ctx := context.Background()
	src := mustCreate(t, b, volSpec("src", 16*chunk))
	if err := os.WriteFile(b.store.volumeImage(src.ID), pattern(16*chunk, 7), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := volSpec("clone", 16*chunk)
	spec.Source = &backend.Source{VolumeID: src.ID}
	short := &cancelAfter{Context: ctx, n: 4}
	if _, err := b.CreateVolumeFrom(short, spec); !errors.Is(err, context.Canceled) {
		t.Fatalf("clone with a context that ends = %v, want context.Canceled", err)
	}
	id, err := b.store.LookupName(volumePrefix, "clone", ValidVolumeID)
	if err != nil || id == "" {
		t.Fatalf("the clone's name was not claimed: %q, %v", id, err)
	}
	if !exists(partial(b.store.volumeImage(id))) {
		t.Fatal("the cut-short clone kept no partial copy")
	}
	if err := b.DeleteVolume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if exists(partial(b.store.volumeImage(id))) {
		t.Fatal("the partial copy outlived the volume's deletion")
	}
}
