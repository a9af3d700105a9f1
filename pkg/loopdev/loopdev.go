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

	// known is the device each tag was last attached to or found on, by
	// this process. Find checks it first, with one status call, and scans
	// every loop device only when it is wrong or missing.
	mu    sync.Mutex
	known map[string]string
}

// New returns the loop devices of this machine's /dev and sysfs. Loop
// devices are virtual block devices: /sys/block links to where sysfs keeps
// them, and looking them up through the links costs three times as much.
func New() *Devices {
	return &Devices{sysBlock: "/sys/devices/virtual/block", dev: "/dev", known: map[string]string{}}
}

// MaxTag is the longest tag a device keeps (lo_file_name less its NUL).
const MaxTag = unix.LO_NAME_SIZE - 1

// Tag is what a device's lo_file_name holds: "<volume-id>@<node-tag>".
func Tag(volumeID, nodeTag string) string { return volumeID + "@" + nodeTag }

// Control is the path of the loop-control device.
func (l *Devices) Control() string { return filepath.Join(l.dev, "loop-control") }

// Find returns the device attached to image under tag, or "".
func (l *Devices) Find(image, tag string) (string, error) {
	var want unix.Stat_t
	if err := unix.Stat(image, &want); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", nil
		}
		return "", err
	}
	l.mu.Lock()
	dev := l.known[tag]
	l.mu.Unlock()
	if dev != "" && l.holds(dev, tag, &want) {
		return dev, nil
	}
	dev, err := l.scan(tag, &want)
	l.remember(tag, dev)
	return dev, err
}

// scan looks through the attached loop devices for the one holding the
// file want under tag, and remembers the others' tags.
func (l *Devices) scan(tag string, want *unix.Stat_t) (string, error) {
	dir, err := os.Open(l.sysBlock)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return "", err
	}
	for _, name := range names {
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		// The loop/ directory exists only while a file is attached.
		var st unix.Stat_t
		if unix.Fstatat(int(dir.Fd()), name+"/loop", &st, 0) != nil {
			continue
		}
		dev := filepath.Join(l.dev, name)
		info, err := l.Status(dev)
		if err != nil {
			continue // detached meanwhile, or not ours to read
		}
		switch t := CString(info.File_name[:]); {
		case t == tag && info.Inode == want.Ino && info.Device == want.Dev:
			return dev, nil
		case t != "":
			// Remembered for the Find of that tag, which checks it: after
			// a restart, finding every device costs one scan, not one each.
			l.remember(t, dev)
		}
	}
	return "", nil
}

// holds reports whether dev is attached to the file want under tag.
func (l *Devices) holds(dev, tag string, want *unix.Stat_t) bool {
	info, err := l.Status(dev)
	if err != nil {
		return false // detached meanwhile, or not ours to read
	}
	return CString(info.File_name[:]) == tag && info.Inode == want.Ino && info.Device == want.Dev
}

// remember records dev as tag's device; "" forgets it.
func (l *Devices) remember(tag, dev string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if dev == "" {
		delete(l.known, tag)
	} else {
		l.known[tag] = dev
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
			l.remember(tag, dev)
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
	for tag, d := range l.known {
		if d == dev {
			delete(l.known, tag)
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
