package loop

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
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

func TestBuildImageCancelled(t *testing.T) {
	const chunk = 64 << 10
	withoutReflink(t, chunk)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := pattern(8*chunk, 3)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{
		{"before the copy", cancelled},
		// The first check is buildImage's own; the copy stops after two chunks.
		{"between chunks", &cancelAfter{Context: context.Background(), n: 4}},
	} {
		err := buildImage(tc.ctx, dst, src, 0)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: buildImage = %v, want context.Canceled", tc.name, err)
		}
		if c, ok := tc.ctx.(*cancelAfter); ok && c.calls != c.n {
			t.Fatalf("%s: the context was checked %d times, want %d: the copy went on after it ended", tc.name, c.calls, c.n)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 1 {
			t.Fatalf("%s: %v in the directory (%v), want only the source", tc.name, entries, err)
		}
	}
	// Uncancelled, the same chunked copy is complete.
	if err := buildImage(context.Background(), dst, src, 0); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, dst); !bytes.Equal(got, data) {
		t.Fatalf("chunked copy differs from its source (%d bytes, want %d)", len(got), len(data))
	}
}
