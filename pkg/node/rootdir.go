package node

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// initRoot gives the root directory of a volume's filesystem, mounted at
// path, the owner and mode the volume was created with (its uid, gid and
// mode parameters), once: while the root is still as mkfs left it, owned
// by root with mode 0755 and holding nothing but lost+found. A later stage
// finds it changed and leaves it as it is, so what a user changes inside
// the volume stays; a stage after a crash between mkfs and this finds it
// as mkfs left it and completes it. It reports whether it changed the root.
func initRoot(path string, r backend.RootDir) (bool, error) {
	fresh, err := freshRoot(path)
	if err != nil || !fresh {
		return false, err
	}
	return true, r.Apply(path)
}

// freshRoot reports whether the directory at path is as mkfs makes the
// root of a new ext4 or xfs filesystem.
func freshRoot(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	f := backend.FreshRoot
	if st.Uid != f.UID || st.Gid != f.GID || st.Mode&0o7777 != f.Mode {
		return false, nil
	}
	d, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer d.Close()
	names, err := d.Readdirnames(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	for _, n := range names {
		if n != "lost+found" {
			return false, nil
		}
	}
	return true, nil
}
