// Package volcap checks CSI volume capabilities, shared by the controller
// and node services.
package volcap

import (
	"regexp"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// DefaultFsType is the filesystem of a mount volume that names none.
const DefaultFsType = "ext4"

// FsTypes are the filesystems the driver formats, with the smallest volume
// each can be made on (mkfs.xfs refuses filesystems under 300 MB).
var FsTypes = map[string]int64{
	"ext4": 16 << 20,
	"xfs":  300 << 20,
}

// Mode is a CSI access mode.
type Mode = csi.VolumeCapability_AccessMode_Mode

// Check validates one capability: an access type and a known access mode.
func Check(c *csi.VolumeCapability) error {
	if c == nil {
		return csierr.Invalid("volume capability is required")
	}
	switch c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
	case *csi.VolumeCapability_Mount:
		if err := CheckFsType(c.GetMount().GetFsType()); err != nil {
			return err
		}
		if err := CheckMountFlags(c.GetMount().GetMountFlags()); err != nil {
			return err
		}
	default:
		return csierr.Invalid("volume capability needs an access type, block or mount")
	}
	mode := c.GetAccessMode().GetMode()
	if _, ok := csi.VolumeCapability_AccessMode_Mode_name[int32(mode)]; !ok || mode == csi.VolumeCapability_AccessMode_UNKNOWN {
		// Swarm maps --scope multi --sharing none to UNKNOWN
		// (docs/swarm.md, "CreateVolume").
		return csierr.Invalid("access mode %v is not supported: use one of SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER, MULTI_NODE_READER_ONLY, MULTI_NODE_SINGLE_WRITER, MULTI_NODE_MULTI_WRITER (block, or mount on a shared filesystem)", mode)
	}
	return nil
}

// CheckShared rejects a filesystem mounted writable on several nodes: ext4
// and xfs are not cluster filesystems. sharedFS says the backend's volumes
// are directories of a filesystem every node mounts, which allows it. It is
// not applied to ControllerPublishVolume, where Swarm always sends mount
// access (docs/swarm.md, "ControllerPublishVolume and
// ControllerUnpublishVolume").
func CheckShared(c *csi.VolumeCapability, sharedFS bool) error {
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER && !IsBlock(c) && !sharedFS {
		return csierr.Invalid("access mode MULTI_NODE_MULTI_WRITER needs block access: ext4 and xfs must not be mounted on two nodes at once")
	}
	return nil
}

// CheckAll validates a non-empty list of capabilities for a volume's own
// access type (sharedFS as for CheckShared).
func CheckAll(cs []*csi.VolumeCapability, sharedFS bool) error {
	if len(cs) == 0 {
		return csierr.Invalid("volume capabilities are required")
	}
	for _, c := range cs {
		if err := Check(c); err != nil {
			return err
		}
		if err := CheckShared(c, sharedFS); err != nil {
			return err
		}
	}
	return nil
}

// CheckFsType accepts "" (the default) and the supported filesystems.
func CheckFsType(fs string) error {
	if _, ok := FsTypes[fs]; ok || fs == "" {
		return nil
	}
	return csierr.Invalid("fsType %q is not supported: use ext4 or xfs", fs)
}

var optionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.,:=+/-]*$`)

// mountOperations are mount(8) options that are operations rather than
// settings of the filesystem: they would turn the driver's mount of a
// device into something else.
var mountOperations = []string{"bind", "rbind", "remount", "move"}

// CheckMountFlags accepts plain mount options only.
func CheckMountFlags(flags []string) error {
	for _, f := range flags {
		if !optionPattern.MatchString(f) {
			return csierr.Invalid("mount flag %q is not a plain mount option", f)
		}
		if slices.Contains(mountOperations, f) {
			return csierr.Invalid("mount flag %q is a mount operation, not an option", f)
		}
	}
	return nil
}

// SplitMountOptions checks and splits the mountOptions parameter: mount
// options separated by commas, as in fstab (e.g. "noatime,logbsize=256k").
func SplitMountOptions(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	opts := strings.Split(s, ",")
	for _, o := range opts {
		if !optionPattern.MatchString(o) {
			return nil, csierr.Invalid("mountOptions: %q is not a plain mount option (options are separated by commas)", o)
		}
		if slices.Contains(mountOperations, o) {
			return nil, csierr.Invalid("mountOptions: %q is a mount operation, not an option", o)
		}
	}
	return opts, nil
}

// SplitMkfsOptions checks and splits the mkfsOptions parameter.
func SplitMkfsOptions(s string) ([]string, error) {
	args := strings.Fields(s)
	for _, a := range args {
		if !optionPattern.MatchString(strings.TrimLeft(a, "-")) {
			return nil, csierr.Invalid("mkfsOptions: %q is not a plain option", a)
		}
	}
	return args, nil
}

// IsBlock reports whether c asks for raw block access.
func IsBlock(c *csi.VolumeCapability) bool { return c.GetBlock() != nil }

// ReadOnly reports whether a mode allows no writer at all.
func ReadOnly(m Mode) bool {
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY ||
		m == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
}

// SingleNode reports whether a mode confines the volume to one node.
func SingleNode(m Mode) bool {
	return slices.Contains([]Mode{
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	}, m)
}

// ParseMode returns the mode named name, as stored by ModeName.
func ParseMode(name string) Mode {
	return Mode(csi.VolumeCapability_AccessMode_Mode_value[name])
}

// ModeName returns the name a mode is stored under.
func ModeName(m Mode) string { return m.String() }
