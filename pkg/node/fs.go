package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
)

// growSlack is how much larger than its filesystem a device must be before
// the filesystem is grown: less is left over by the filesystem's own
// rounding.
const growSlack = 1 << 20

// needsGrow reports whether the filesystem on dev is smaller than dev. It
// reads the superblock itself, which costs one read instead of the two
// processes that mount-utils' NeedResize starts.
func needsGrow(dev, fsType string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	devSize, err := blockdev.SizeFd(int(f.Fd()))
	if err != nil {
		return false, err
	}
	fsSize, err := filesystemSize(f, fsType)
	if errors.Is(err, errNoFilesystem) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", dev, err)
	}
	return devSize-fsSize >= growSlack, nil
}

var errNoFilesystem = errors.New("no filesystem of that type")

// filesystemSize returns the size in bytes an ext4 or xfs filesystem spans,
// from its superblock.
func filesystemSize(f *os.File, fsType string) (int64, error) {
	sb := make([]byte, 2048)
	if _, err := f.ReadAt(sb, 0); err != nil {
		return 0, fmt.Errorf("read superblock: %w", err)
	}
	switch fsType {
	case "ext4":
		ext := sb[1024:]
		le := binary.LittleEndian
		if le.Uint16(ext[0x38:]) != 0xEF53 {
			return 0, errNoFilesystem
		}
		blocks := uint64(le.Uint32(ext[0x4:]))
		if le.Uint32(ext[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
			blocks |= uint64(le.Uint32(ext[0x150:])) << 32
		}
		return int64(blocks << (10 + le.Uint32(ext[0x18:]))), nil
	case "xfs":
		be := binary.BigEndian
		if string(sb[:4]) != "XFSB" {
			return 0, errNoFilesystem
		}
		return int64(be.Uint64(sb[8:]) * uint64(be.Uint32(sb[4:]))), nil
	}
	return 0, fmt.Errorf("filesystem %q is not supported", fsType)
}

// readyToMount reports whether dev holds an fsType filesystem that fsck -a
// would leave as it is: for ext4 one marked clean, with no journal to
// replay, no orphans and no check due; an xfs one (fsck does nothing to
// xfs). It reads the superblock itself, in place of the blkid and fsck
// processes mount-utils starts to find that out.
func readyToMount(dev, fsType string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sb := make([]byte, 2048)
	if _, err := f.ReadAt(sb, 0); err != nil {
		return false, fmt.Errorf("read superblock: %w", err)
	}
	switch fsType {
	case "ext4":
		return ext4Clean(sb[1024:]), nil
	case "xfs":
		return string(sb[:4]) == "XFSB", nil
	}
	return false, nil
}

// ext4Clean reads an ext4 superblock as e2fsck -p decides whether to check
// the filesystem.
func ext4Clean(sb []byte) bool {
	le := binary.LittleEndian
	const (
		validFS     = 0x1 // s_state: unmounted cleanly
		errorFS     = 0x2 // s_state: errors detected
		needsReplay = 0x4 // s_feature_incompat RECOVER: a journal to replay
	)
	state := le.Uint16(sb[0x3a:])
	maxMounts := int16(le.Uint16(sb[0x36:]))
	return le.Uint16(sb[0x38:]) == 0xEF53 &&
		state&validFS != 0 && state&errorFS == 0 &&
		le.Uint32(sb[0x60:])&needsReplay == 0 &&
		le.Uint32(sb[0xe8:]) == 0 && // s_last_orphan
		(maxMounts <= 0 || int16(le.Uint16(sb[0x34:])) < maxMounts) &&
		le.Uint32(sb[0x44:]) == 0 // s_checkinterval: no check by time
}
