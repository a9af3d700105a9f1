// Package blockdev reads facts about block devices.
package blockdev

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Size returns the size in bytes of the block device at path.
func Size(path string) (int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	return SizeFd(fd)
}

// SizeFd returns the size in bytes of the open block device fd.
func SizeFd(fd int) (int64, error) {
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	return int64(size), nil
}
