package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/mountinfo"
)

// leftovers lists the mounts under dir (outermost first) and the loop
// devices whose backing file is under dir.
func leftovers(dir string) (mounts, loops []string, err error) {
	under := func(p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 {
			if p := mountinfo.Unescape(fields[4]); under(p) {
				mounts = append(mounts, p)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range files {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue // detached meanwhile
		}
		if under(strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")) {
			loops = append(loops, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(bf))))
		}
	}
	return mounts, loops, nil
}

// settledLeftovers is leftovers, re-checked for up to 3 s: a detached loop
// device lingers while something (udev, blkid) still has it open.
func settledLeftovers(dir string) (mounts, loops []string, err error) {
	for deadline := time.Now().Add(3 * time.Second); ; {
		mounts, loops, err = leftovers(dir)
		if err != nil || len(mounts)+len(loops) == 0 || time.Now().After(deadline) {
			return mounts, loops, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sweep unmounts and detaches whatever is still under dir, then removes dir.
// It returns what it had to clean up: after a clean run, nothing.
func sweep(dir string) (swept []string, err error) {
	mounts, loops, err := settledLeftovers(dir)
	if err != nil {
		return nil, err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if syscall.Unmount(mounts[i], 0) != nil {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	for _, dev := range loops {
		_, _ = execute(context.Background(), "losetup", "-d", dev)
	}
	swept = append(mounts, loops...)
	if mounts, loops, err = settledLeftovers(dir); err != nil {
		return swept, err
	}
	if len(mounts)+len(loops) > 0 {
		return swept, fmt.Errorf("could not clean up, left in place: %v (not removing %s)", append(mounts, loops...), dir)
	}
	return swept, os.RemoveAll(dir)
}

// readRSS reads the resident memory of process pid.
func readRSS(pid, volumes int) (*RSSReport, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	rep := &RSSReport{Volumes: volumes}
	for line := range strings.Lines(string(b)) {
		key, val, _ := strings.Cut(line, ":")
		kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		switch key {
		case "VmRSS":
			rep.VmRSSKiB = kib
		case "VmHWM":
			rep.VmHWMKiB = kib
		}
	}
	if rep.VmRSSKiB == 0 {
		return nil, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return rep, nil
}
