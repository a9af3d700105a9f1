package loop

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// buildImage makes path a durable image of size bytes: a copy of src grown
// to size when src is set (size 0 keeps the source's size), an empty sparse
// file otherwise. It is built under a temporary name and renamed into place,
// so path never holds a partial image.
func buildImage(path, src string, size int64) (err error) {
	call := "create image"
	if src != "" {
		call = "copy image"
	}
	start := time.Now()
	defer func() { metrics.Observe("loop", call, start, err) }()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // no-op after the rename
	err = fillImage(f, src, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("building image %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(path))
}

func fillImage(dst *os.File, src string, size int64) error {
	if src != "" {
		s, err := os.Open(src)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := copyImage(dst, s); err != nil {
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

// copyImage copies src into the empty file dst: a reflink (FICLONE) where the
// filesystem can share extents, else only the data regions of a sparse file.
func copyImage(dst, src *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return nil
	}
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for off := int64(0); off < size; {
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
		if err := copyRange(dst, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return dst.Truncate(size)
}

// copyRange copies n bytes at offset off from src to dst at the same offset.
func copyRange(dst, src *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n, 1<<30)), 0)
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
