package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Mounter is what the node service needs from the operating system. The
// real one is NewMounter; tests use a fake.
type Mounter interface {
	// FormatAndMount mounts device at target, formatting it first only if
	// it holds no filesystem at all.
	FormatAndMount(device, target, fsType string, mkfsArgs, options []string) error
	// FormatBlankAndMount formats a device known to hold only zeros and
	// mounts it at target: FormatAndMount without probing the device.
	FormatBlankAndMount(device, target, fsType string, mkfsArgs, options []string) error
	// BindMount bind-mounts source at target with the given options.
	BindMount(source, target string, options []string) error
	// Unmount unmounts target; a target that is not mounted is no error.
	Unmount(target string) error
	// IsMountPoint reports whether path is a mount point; fs.ErrNotExist
	// when it does not exist.
	IsMountPoint(path string) (bool, error)
	// NeedsResize reports whether the fsType filesystem on device is
	// smaller than the device; false when the device holds none.
	NeedsResize(device, fsType string) (bool, error)
	// Resize grows the filesystem on device, mounted at mountPath, to the
	// device's size.
	Resize(device, mountPath, fsType string) error
	// ResizeUnmounted grows an unmounted filesystem to its device's size,
	// where the filesystem allows it (ext4); it reports whether it did.
	ResizeUnmounted(device, fsType string) (bool, error)
}

// NewMounter returns the real Mounter: k8s.io/mount-utils' SafeFormatAndMount
// for formatting (it never formats a device that holds a filesystem) and
// resizing, with mounts done by system calls rather than mount(8).
func NewMounter() Mounter {
	// A bare Mounter: mount.New would probe umount(8) and systemd-run at
	// start, and sysMounter replaces the calls those probes are for.
	sys := &sysMounter{Interface: &mount.Mounter{}}
	exec := utilexec.New()
	return &realMounter{
		sys:    sys,
		exec:   exec,
		safe:   &mount.SafeFormatAndMount{Interface: sys, Exec: exec},
		resize: mount.NewResizeFs(exec),
	}
}

type realMounter struct {
	sys    *sysMounter
	exec   utilexec.Interface
	safe   *mount.SafeFormatAndMount
	resize *mount.ResizeFs
}

func (m *realMounter) FormatAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	if fsType == "" {
		fsType = "ext4"
	}
	// A filesystem that fsck would leave as it is is mounted as
	// SafeFormatAndMount mounts it, less the blkid and fsck processes
	// (most of the time a restart's restore of many volumes takes).
	if ready, err := readyToMount(device, fsType); err == nil && ready {
		return m.sys.Mount(device, target, fsType, append(slices.Clone(options), "defaults"))
	}
	return m.safe.FormatAndMountSensitiveWithFormatOptions(device, target, fsType, options, nil, mkfsArgs)
}

// mkfsFlags are what SafeFormatAndMount gives mkfs besides the caller's
// options: force, and for ext4 no blocks reserved for root.
var mkfsFlags = map[string][]string{"ext4": {"-F", "-m0"}, "ext3": {"-F", "-m0"}, "xfs": {"-f"}}

// FormatBlankAndMount runs mkfs as SafeFormatAndMount does for a device
// holding no filesystem, less the blkid process it starts to find out.
func (m *realMounter) FormatBlankAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	if fsType == "" {
		fsType = "ext4"
	}
	args := append(append(slices.Clone(mkfsArgs), mkfsFlags[fsType]...), device)
	if out, err := m.exec.Command("mkfs."+fsType, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("format of disk %q as %s failed: %v: %s", device, fsType, err, out)
	}
	return m.sys.Mount(device, target, fsType, append(slices.Clone(options), "defaults"))
}

func (m *realMounter) BindMount(source, target string, options []string) error {
	return m.sys.Mount(source, target, "", append([]string{"bind"}, options...))
}

func (m *realMounter) Unmount(target string) error { return m.sys.Unmount(target) }

func (m *realMounter) IsMountPoint(path string) (bool, error) { return m.sys.IsMountPoint(path) }

func (m *realMounter) NeedsResize(device, fsType string) (bool, error) {
	return needsGrow(device, fsType)
}

func (m *realMounter) Resize(device, mountPath, fsType string) error {
	// The kernel lets only CAP_SYS_RESOURCE resize a mounted ext4.
	if fsType == "ext4" && !hasCapability(unix.CAP_SYS_RESOURCE) {
		return csierr.Precondition("growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this process lacks; " +
			"it grows at the volume's next stage instead")
	}
	_, err := m.resize.Resize(device, mountPath)
	return err
}

// ResizeUnmounted checks an ext4 filesystem and grows it with resize2fs,
// which needs no capability on an unmounted filesystem. XFS grows only
// while mounted.
func (m *realMounter) ResizeUnmounted(device, fsType string) (bool, error) {
	if fsType != "ext4" {
		return false, nil
	}
	// resize2fs insists on a freshly checked filesystem. Exit codes 1 and 2
	// of e2fsck -p mean errors were corrected.
	if out, err := m.exec.Command("e2fsck", "-f", "-p", device).CombinedOutput(); err != nil {
		var ee utilexec.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() > 2 {
			return false, fmt.Errorf("e2fsck %s: %v: %s", device, err, out)
		}
	}
	if out, err := m.exec.Command("resize2fs", device).CombinedOutput(); err != nil {
		return false, fmt.Errorf("resize2fs %s: %v: %s", device, err, out)
	}
	return true, nil
}

// hasCapability reports whether the process has capability c in effect.
func hasCapability(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}

// sysMounter is mount-utils' Mounter with mount and unmount done by system
// calls: the same semantics without a mount(8) process per call.
type sysMounter struct {
	mount.Interface
}

var mountFlags = map[string]uintptr{
	"ro":          unix.MS_RDONLY,
	"nosuid":      unix.MS_NOSUID,
	"nodev":       unix.MS_NODEV,
	"noexec":      unix.MS_NOEXEC,
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
	"lazytime":    unix.MS_LAZYTIME,
	"sync":        unix.MS_SYNCHRONOUS,
	"dirsync":     unix.MS_DIRSYNC,
	"bind":        unix.MS_BIND,
	"rw":          0,
	"defaults":    0,
	"suid":        0,
	"dev":         0,
	"exec":        0,
}

// parseOptions splits mount options into flags and filesystem data.
func parseOptions(options []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			flags |= f
		} else {
			data = append(data, o)
		}
	}
	return flags, strings.Join(data, ",")
}

func (m *sysMounter) Mount(source, target, fstype string, options []string) error {
	flags, data := parseOptions(options)
	if flags&unix.MS_BIND == 0 {
		if err := unix.Mount(source, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s (%s, %v): %w", source, target, fstype, options, err)
		}
		return nil
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s on %s: %w", source, target, err)
	}
	// Flags of a bind mount take effect only through a remount.
	if rest := flags &^ unix.MS_BIND; rest != 0 {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|rest, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return fmt.Errorf("remount %s with %v: %w", target, options, err)
		}
	}
	return nil
}

func (m *sysMounter) MountSensitive(source, target, fstype string, options, _ []string) error {
	return m.Mount(source, target, fstype, options)
}

func (m *sysMounter) MountSensitiveWithoutSystemd(source, target, fstype string, options, sensitive []string) error {
	return m.Mount(source, target, fstype, options)
}

func (m *sysMounter) MountSensitiveWithoutSystemdWithMountFlags(source, target, fstype string, options, sensitive, _ []string) error {
	return m.Mount(source, target, fstype, options)
}

func (m *sysMounter) Unmount(target string) error {
	err := unix.Unmount(target, 0)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil // not mounted, or gone
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}

// removePath removes a mount point directory or file, if present.
func removePath(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
