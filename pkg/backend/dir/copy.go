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

	"github.com/swarm-csi/swarm-csi/pkg/fsutil"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// chunk is how much of a file is copied between two looks at ctx.
const chunk = 64 << 20

// copyTree copies the tree at src to dst: regular files (a reflink where
// the filesystem shares extents, FICLONE, else a copy), directories,
// symbolic links, FIFOs and device nodes, with their mode, owner and
// modification time. Hard links become separate files; extended attributes
// and sockets are not copied. Every file and directory is made durable, so
// that once the caller renames dst into place the copy survives a crash. It
// stops when ctx ends, and returns the bytes of the regular files in the
// copy.
//
// dst may hold what an earlier copy that ctx ended made: a regular file
// there of the source's size and modification time (given only once it was
// copied whole and synced) is kept, everything else is made again.
//
// The source is a volume that containers may be writing, so it is read
// through an os.Root: an entry swapped for a symbolic link while the copy
// runs is never followed out of the source tree, which would copy, as
// root, files the volume's users cannot read into a volume they can.
func copyTree(ctx context.Context, src, dst string) (size int64, err error) {
	start := time.Now()
	defer func() { metrics.Observe("dir", "copy tree", start, err) }()
	root, err := os.OpenRoot(src)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	var dirs []string // to sync and date once their entries are in
	err = fs.WalkDir(root.FS(), ".", func(rel string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := root.Lstat(rel)
		if err != nil {
			return err
		}
		if m := fi.Mode(); m.IsDir() {
			if err := os.Mkdir(to, 0o700); err != nil && !isDir(to) {
				return err
			}
			dirs = append(dirs, rel)
			return nil // owner, mode and times once its entries are in
		}
		if copied(to, fi) {
			size += fi.Size()
			return nil
		}
		if err := os.RemoveAll(to); err != nil { // a partial copy's
			return err
		}
		switch m := fi.Mode(); {
		case m.IsRegular():
			var n int64
			n, fi, err = copyFile(ctx, root, rel, to)
			size += n
			if err != nil {
				return err
			}
		case m&fs.ModeSymlink != 0:
			target, err := root.Readlink(rel)
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
		fi, err := root.Lstat(dirs[i])
		if err != nil {
			return size, err
		}
		to := filepath.Join(dst, dirs[i])
		if !fi.IsDir() {
			return size, fmt.Errorf("%s: no longer a directory", to)
		}
		if err := setAttrs(to, fi); err != nil {
			return size, err
		}
		if err := fsutil.SyncDir(to); err != nil {
			return size, err
		}
	}
	return size, nil
}

// isDir reports whether path is a directory (not a link to one).
func isDir(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir()
}

// copied reports whether path is the whole copy of the regular file fi
// describes, made by an earlier copy: setAttrs dates a file only once it
// has been copied whole and synced.
func copied(path string, src fs.FileInfo) bool {
	fi, err := os.Lstat(path)
	return err == nil && src.Mode().IsRegular() && fi.Mode().IsRegular() &&
		fi.Size() == src.Size() && fi.ModTime().Equal(src.ModTime())
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

// testHookCopyFile, when set, runs before copyFile opens rel.
var testHookCopyFile func(rel string)

// copyFile copies the regular file rel of root to dst and syncs it; it
// returns the bytes copied and the file's information. An entry that is no
// longer a regular file when opened (a FIFO opened without O_NONBLOCK
// would block the copy) is an error.
func copyFile(ctx context.Context, root *os.Root, rel, dst string) (int64, fs.FileInfo, error) {
	if testHookCopyFile != nil {
		testHookCopyFile(rel)
	}
	in, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, nil, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, nil, err
	}
	if !fi.Mode().IsRegular() {
		return 0, nil, fmt.Errorf("copy %s: changed into a %s while being copied", rel, fi.Mode().Type())
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, nil, err
	}
	n, err := fillFile(ctx, out, in, fi.Size())
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, nil, fmt.Errorf("copy %s: %w", rel, err)
	}
	return n, fi, nil
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
