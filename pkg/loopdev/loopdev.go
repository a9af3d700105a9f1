// Package loopdev attaches files to the kernel's loop devices with its loop
// ioctls, and finds them again after a restart by a tag kept in the
// device's lo_file_name. The loop backend attaches its image files with it;
// the rbd backend's fuse mode attaches the file rbd-fuse exposes.
package loopdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
)

// Devices attaches files to loop devices and finds them again. Each device
// is tagged (lo_file_name), usually with the volume id and a hash of the
// node id, so that several node processes sharing one kernel (a test swarm
// on one machine) never mistake each other's devices for their own.
type Devices struct {
	sysBlock string // where the kernel lists block devices, by name
	dev      string // /dev
	// attachMu keeps this process's attaches from racing each other for the
	// same free device; the race with other processes is handled by
	// retrying.
	attachMu sync.Mutex

	// known is, by the name of their file (its last path element), the
	// devices this process attached or saw attached. Find checks those of
	// its file's name first, with one status call each, and scans every
	// loop device only when none holds the file.
	mu    sync.Mutex
	known map[string][]string
}

// New returns the loop devices of this machine's /dev and sysfs. Loop
// devices are virtual block devices: /sys/block links to where sysfs keeps
// them, and looking them up through the links costs three times as much.
func New() *Devices {
	return &Devices{sysBlock: "/sys/devices/virtual/block", dev: "/dev", known: map[string][]string{}}
}

// MaxTag is the longest tag a device keeps (lo_file_name less its NUL).
const MaxTag = unix.LO_NAME_SIZE - 1

// Tag is what a device's lo_file_name holds: "<volume-id>@<node-tag>".
func Tag(volumeID, nodeTag string) string { return volumeID + "@" + nodeTag }

// Control is the path of the loop-control device.
func (l *Devices) Control() string { return filepath.Join(l.dev, "loop-control") }

// Find returns the device attached to image under tag, or "".
//
// It asks for the status of no device attached to a file of another name.
// The kernel answers a device's status only after asking the filesystem of
// the device's file for the file's inode: a FUSE daemon that no longer
// answers (rbd-fuse stuck, or its cluster gone) holds that call until it
// answers or dies, and would hold the Find of every other volume. A file
// on such a filesystem holds the Find of its own name (its Stat, and the
// status of its device), which the kernel lets no signal but a fatal one
// interrupt.
func (l *Devices) Find(image, tag string) (string, error) {
	var want unix.Stat_t
	if err := unix.Stat(image, &want); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", nil
		}
		return "", err
	}
	name := filepath.Base(image)
	l.mu.Lock()
	known := slices.Clone(l.known[name])
	l.mu.Unlock()
	for _, dev := range known {
		if l.holds(dev, name, tag, &want) {
			return dev, nil
		}
	}
	return l.scan(name, tag, &want)
}

// scan looks through the attached loop devices for the one holding the
// file want, of that name, under tag. It remembers every device by the
// name of its file: after a restart, finding every device costs one scan,
// not one each.
func (l *Devices) scan(name, tag string, want *unix.Stat_t) (string, error) {
	dir, err := os.Open(l.sysBlock)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	entries, err := dir.Readdirnames(-1)
	if err != nil {
		return "", err
	}
	seen := map[string][]string{}
	found := ""
	for _, e := range entries {
		if !strings.HasPrefix(e, "loop") {
			continue
		}
		file, err := fileName(int(dir.Fd()), e)
		if err == nil && file == "" {
			continue // no file attached
		}
		dev := filepath.Join(l.dev, e)
		if err == nil {
			seen[file] = append(seen[file], dev)
		}
		if found == "" && (err != nil || file == name) && l.holds(dev, name, tag, want) {
			found = dev
		}
	}
	l.mu.Lock()
	l.known = seen
	l.mu.Unlock()
	return found, nil
}

// fileName returns the last path element of the file attached to the
// loop device whose sysfs directory is dir (relative to the directory at,
// a descriptor, or AT_FDCWD), as sysfs shows it without asking the file's
// filesystem ("... (deleted)" once the file is removed), or "" when none
// is attached.
func fileName(at int, dir string) (string, error) {
	fd, err := unix.Openat(at, dir+"/loop/backing_file", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return "", nil // the loop/ directory exists only while a file is attached
	}
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var b [4096]byte // sysfs shows at most a page
	n, err := unix.Read(fd, b[:])
	if err != nil {
		return "", err
	}
	return filepath.Base(strings.TrimSuffix(string(b[:n]), "\n")), nil
}

// holds reports whether dev is attached to the file want, of that name,
// under tag. It asks for the device's status only when sysfs shows a file
// of that name, or cannot tell.
func (l *Devices) holds(dev, name, tag string, want *unix.Stat_t) bool {
	if file, err := fileName(unix.AT_FDCWD, filepath.Join(l.sysBlock, filepath.Base(dev))); err == nil && file != "" && file != name {
		return false
	}
	info, err := l.Status(dev)
	if err != nil {
		return false // detached meanwhile, or not ours to read
	}
	return CString(info.File_name[:]) == tag && info.Inode == want.Ino && info.Device == want.Dev
}

// remember records dev as the device of a file named name.
func (l *Devices) remember(name, dev string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !slices.Contains(l.known[name], dev) {
		l.known[name] = append(l.known[name], dev)
	}
}

// Status returns the loop status of dev.
func (l *Devices) Status(dev string) (*unix.LoopInfo64, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return unix.IoctlLoopGetStatus64(fd)
}

// Attach binds image to a free loop device tagged with tag (at most MaxTag
// bytes) and returns the device's path. With directIO the device bypasses
// the page cache where the image's filesystem allows it.
func (l *Devices) Attach(image, tag string, directIO bool) (string, error) {
	if len(tag) > MaxTag {
		return "", fmt.Errorf("loop device tag %q is longer than %d bytes", tag, MaxTag)
	}
	file, err := os.OpenFile(image, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer file.Close()
	ctl, err := unix.Open(l.Control(), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open loop-control: %w", err)
	}
	defer unix.Close(ctl)

	cfg := unix.LoopConfig{Fd: uint32(file.Fd())}
	if directIO {
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	}
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], tag)
	for attempt := 0; attempt < 20; attempt++ {
		dev, err := l.configureFree(ctl, &cfg)
		switch {
		case err == nil:
			l.remember(filepath.Base(image), dev)
			return dev, nil
		case errors.Is(err, unix.EBUSY):
			// Another process took it first.
		case errors.Is(err, unix.ENOENT):
			// Just added by the kernel: devtmpfs makes its node shortly.
			if err := waitForNode(dev); err != nil {
				return "", err
			}
		default:
			return "", err
		}
	}
	return "", errors.New("no free loop device after 20 attempts")
}

// configureFree binds cfg's file to the first free loop device and returns
// the device's path, also with an error about it. It holds attachMu for
// no more than three system calls and never sleeps with it.
func (l *Devices) configureFree(ctl int, cfg *unix.LoopConfig) (string, error) {
	l.attachMu.Lock()
	defer l.attachMu.Unlock()
	n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return "", fmt.Errorf("find a free loop device: %w", err)
	}
	dev := fmt.Sprintf("%s/loop%d", l.dev, n)
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return dev, fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	err = unix.IoctlLoopConfigure(fd, cfg)
	if errors.Is(err, unix.EINVAL) && cfg.Info.Flags&unix.LO_FLAGS_DIRECT_IO != 0 {
		// The backing filesystem cannot do direct I/O: use the page cache.
		cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
		err = unix.IoctlLoopConfigure(fd, cfg)
	}
	if err != nil {
		return dev, fmt.Errorf("configure %s: %w", dev, err)
	}
	return dev, nil
}

// waitForNode waits up to half a second for the node of a freshly added
// loop device to appear.
func waitForNode(dev string) error {
	for range 50 {
		time.Sleep(10 * time.Millisecond)
		if _, err := os.Stat(dev); err == nil {
			return nil
		}
	}
	return fmt.Errorf("open %s: %w", dev, unix.ENOENT)
}

// Detach unbinds a loop device. If something still holds it open, the
// kernel detaches it when the last holder lets go.
func (l *Devices) Detach(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, devs := range l.known {
		if devs = slices.DeleteFunc(devs, func(d string) bool { return d == dev }); len(devs) == 0 {
			delete(l.known, name)
		} else {
			l.known[name] = devs
		}
	}
	return nil
}

// Refresh makes dev see the current size of image, its backing file.
func (l *Devices) Refresh(dev, image string) error {
	fi, err := os.Stat(image)
	if err != nil {
		return err
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	size, err := blockdev.SizeFd(fd)
	if err != nil {
		return err
	}
	if size == fi.Size() {
		return nil
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("refresh size of %s: %w", dev, err)
	}
	return nil
}

// DirectIO reports whether dev reads and writes its file past the page
// cache.
func (l *Devices) DirectIO(dev string) (bool, error) {
	info, err := l.Status(dev)
	if err != nil {
		return false, err
	}
	return info.Flags&unix.LO_FLAGS_DIRECT_IO != 0, nil
}

// SetDirectIO switches an attached device's direct I/O on or off, if it is
// not so already, and reports whether it switched. The kernel writes the
// file's dirty pages back and holds the device's requests while it
// switches: a filesystem mounted on it carries on. A file whose filesystem
// cannot do direct I/O keeps the page cache, as with Attach.
func (l *Devices) SetDirectIO(dev string, on bool) (bool, error) {
	cur, err := l.DirectIO(dev)
	if err != nil || cur == on {
		return false, err
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	arg := 0
	if on {
		arg = 1
	}
	err = unix.IoctlSetInt(fd, unix.LOOP_SET_DIRECT_IO, arg)
	if on && errors.Is(err, unix.EINVAL) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("set direct I/O of %s to %v: %w", dev, on, err)
	}
	return true, nil
}

// CString returns the string in b up to its first NUL.
func CString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
