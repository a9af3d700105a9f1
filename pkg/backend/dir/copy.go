package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// chunk is how much of a file is copied between two looks at ctx.
const chunk = 64 << 20

// copyTree copies the tree at src to dst, which must not exist: regular
// files (a reflink where the filesystem shares extents, FICLONE, else a
// copy), directories, symbolic links, FIFOs and device nodes, with their
// mode, owner and modification time. Hard links become separate files;
// extended attributes and sockets are not copied. Every file and directory
// is made durable, so that once the caller renames dst into place the copy
// survives a crash. It stops when ctx ends, and returns the bytes of the
// regular files copied.
func copyTree(ctx context.Context, src, dst string) (size int64, err error) {
	start := time.Now()
	defer func() { metrics.Observe("dir", "copy tree", start, err) }()
	var dirs []string // to sync and date once their entries are in
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch m := fi.Mode(); {
		case m.IsDir():
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, path)
			return nil // owner, mode and times once its entries are in
		case m.IsRegular():
			n, err := copyFile(ctx, path, to, fi)
			size += n
			if err != nil {
				return err
			}
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
		case m&(fs.ModeNamedPipe|fs.ModeDevice|fs.ModeCharDevice) != 0:
			st := fi.Sys().(*syscall.Stat_t)
			if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
				return fmt.Errorf("mknod %s: %w", to, err)
			}
		default:
			return nil // a socket: meaningless in a copy
		}
		return setAttrs(to, fi)
	})
	if err != nil {
		return size, err
	}
	// Deepest first, so that dating a directory comes after its entries.
	for i := len(dirs) - 1; i >= 0; i-- {
		fi, err := os.Lstat(dirs[i])
		if err != nil {
			return size, err
		}
		rel, _ := filepath.Rel(src, dirs[i])
		to := filepath.Join(dst, rel)
		if err := setAttrs(to, fi); err != nil {
			return size, err
		}
		if err := syncPath(to); err != nil {
			return size, err
		}
	}
	return size, nil
}

// setAttrs gives path the owner, mode and modification time of fi.
func setAttrs(path string, fi fs.FileInfo) error {
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		// After chown, which clears setuid and setgid.
		if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(st.Atim.Nano()), unix.NsecToTimespec(st.Mtim.Nano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// copyFile copies a regular file and syncs it; it returns the bytes copied.
func copyFile(ctx context.Context, src, dst string, fi fs.FileInfo) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := fillFile(ctx, out, in, fi.Size())
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("copy %s: %w", src, err)
	}
	return n, nil
}

// fillFile copies in to the empty file out: a reflink where the filesystem
// can share extents, else in chunks, looking at ctx between them.
func fillFile(ctx context.Context, out, in *os.File, size int64) (int64, error) {
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return size, nil
	}
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		// io.CopyN uses copy_file_range where it can.
		c, err := io.CopyN(out, in, chunk)
		n += c
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// treeSize is the bytes of the regular files under path.
func treeSize(path string) (int64, error) {
	var size int64
	err := filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			size += fi.Size()
		}
		return err
	})
	return size, err
}
