package backend

import (
	"io/fs"
	"math"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// The CreateVolume parameters that set the owner and mode of a new volume's
// root directory, for containers that run as another user than root.
const (
	ParamUID  = "uid"
	ParamGID  = "gid"
	ParamMode = "mode"
)

// RootDir is the owner and permission bits that the root directory of a
// new volume gets when its filesystem is made (or, for a directory volume,
// when the directory is). A fresh filesystem's root is owned by root with
// mode 0755: that is what a RootDir leaves of it that its parameters do
// not set.
type RootDir struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	Mode uint32 `json:"mode"`
}

// FreshRoot is the root directory as mkfs makes it.
var FreshRoot = RootDir{UID: 0, GID: 0, Mode: 0o755}

// ParseRootDir reads the uid, gid and mode parameters of params: decimal
// ids up to 2^32-2 (2^32-1 means "no id" to chown) and octal permission
// bits up to 07777. It returns nil when they leave the root as mkfs makes
// it. Bad values are InvalidArgument naming the parameter.
func ParseRootDir(params map[string]string) (*RootDir, error) {
	r := FreshRoot
	for _, p := range []struct {
		name string
		max  uint64
		base int
		dst  *uint32
	}{
		{ParamUID, math.MaxUint32 - 1, 10, &r.UID},
		{ParamGID, math.MaxUint32 - 1, 10, &r.GID},
		{ParamMode, 0o7777, 8, &r.Mode},
	} {
		val, ok := params[p.name]
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(val, p.base, 32)
		if err != nil || n > p.max {
			what := "a decimal number from 0 to 4294967294"
			if p.base == 8 {
				what = "octal permission bits from 0 to 07777, such as 0750"
			}
			return nil, csierr.Invalid("parameter %s=%q: must be %s", p.name, val, what)
		}
		*p.dst = uint32(n)
	}
	if r == FreshRoot {
		return nil, nil
	}
	return &r, nil
}

// Parameters returns the parameters that make r, as ParseRootDir reads
// them.
func (r RootDir) Parameters() map[string]string {
	return map[string]string{
		ParamUID:  strconv.FormatUint(uint64(r.UID), 10),
		ParamGID:  strconv.FormatUint(uint64(r.GID), 10),
		ParamMode: "0" + strconv.FormatUint(uint64(r.Mode), 8),
	}
}

// Apply gives the directory at path r's owner and mode.
func (r RootDir) Apply(path string) error {
	if err := unix.Lchown(path, int(r.UID), int(r.GID)); err != nil {
		return &fs.PathError{Op: "chown", Path: path, Err: err}
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, path, r.Mode, 0); err != nil {
		return &fs.PathError{Op: "chmod", Path: path, Err: err}
	}
	return nil
}
