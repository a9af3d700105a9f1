package loop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// buildImage makes path an image of size bytes: a copy of src grown to size
// when src is set (size 0 keeps the source's size), an empty sparse file
// otherwise. It is built and synced under a temporary name (partial) and
// renamed into place, so path never holds a partial image. A copy that
// ctx ends keeps what it has copied, and the next build of the same path
// goes on from there: a clone larger than one call's time (Swarm gives each
// call about 15 s, docs/swarm.md) completes over the retries instead of
// starting again each time. A build that fails otherwise leaves nothing
// behind. The rename is durable once the caller has synced the directory.
func buildImage(ctx context.Context, path, src string, size int64) (err error) {
	call := "create image"
	if src != "" {
		call = "copy image"
	}
	start := time.Now()
	defer func() { metrics.Observe("loop", call, start, err) }()
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp := partial(path)
	flags := os.O_RDWR | os.O_CREATE
	if src == "" {
		flags |= os.O_TRUNC // nothing worth keeping: an empty image is made at once
	}
	f, err := os.OpenFile(tmp, flags, 0o600)
	if err != nil {
		return err
	}
	err = fillImage(ctx, f, src, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		if src == "" || !(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			os.Remove(tmp)
		}
		return fmt.Errorf("building image %s: %w", path, err)
	}
	return nil
}

// partial is where the image at path is built: removed with the image's
// volume or snapshot, so that what a cancelled copy left is never orphaned.
func partial(path string) string { return path + ".tmp" }

func fillImage(ctx context.Context, dst *os.File, src string, size int64) error {
	if src != "" {
		s, err := os.Open(src)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := copyImage(ctx, dst, s); err != nil {
			return err
		}
	}
	fi, err := dst.Stat()
	if err != nil {
		return err
	}
	if size > fi.Size() {
		return dst.Truncate(size)
	}
	return nil
}

// copyChunk is how much of an image is copied between two checks of the
// context: a clone of many GiB can be cancelled.
var copyChunk int64 = 16 << 20

// reflink shares src's extents with dst (FICLONE), where the filesystem can.
var reflink = func(dst, src *os.File) error { return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) }

// copyImage makes dst a copy of src: a reflink where the filesystem can
// share extents, else only the data regions of a sparse file, copyChunk at
// a time, stopping when ctx ends. What dst holds already, from a copy that
// ctx ended, is kept up to the last whole copyChunk and the copy goes on
// from there.
func copyImage(ctx context.Context, dst, src *os.File) error {
	if err := reflink(dst, src); err == nil {
		return nil
	}
	done, err := dst.Stat()
	if err != nil {
		return err
	}
	resume := done.Size() / copyChunk * copyChunk
	// Cut what may be a partly written chunk, and whatever the source no
	// longer holds, before going on.
	if err := dst.Truncate(resume); err != nil {
		return err
	}
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for off := resume; off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data after off
			break
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		for off = data; off < hole; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(hole-off, copyChunk)
			if err := copyRange(dst, src, off, n); err != nil {
				return err
			}
			off += n
		}
	}
	return dst.Truncate(size)
}

// copyRange copies n bytes at offset off from src to dst at the same offset:
// copy_file_range, which shares or copies blocks in the kernel, or read and
// write where it is not supported.
func copyRange(dst, src *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(dst, src, off, n)
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

func copyRangeRW(dst, src *os.File, off, n int64) error {
	_, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, n))
	return err
}
