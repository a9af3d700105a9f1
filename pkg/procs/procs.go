// Package procs finds the processes a driver started, by their command
// line, so that a restarted driver finds those an earlier one left.
package procs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Serving returns the pids of the live processes running command (its
// base name) whose last argument is last: a FUSE daemon and its mount
// point. One that ended is reaped if it was this process's child: in a
// plugin the driver is its container's init, and a daemon that forked
// itself away from the driver, orphaned, becomes its child.
func Serving(command, last string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			// A zombie has no command line: reap ours.
			if ppid, zombie := state(pid); zombie && ppid == os.Getpid() && comm(pid) == truncComm(command) {
				_, _ = unix.Wait4(pid, nil, unix.WNOHANG, nil)
			}
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == command && args[len(args)-1] == last {
			pids = append(pids, pid)
		}
	}
	return pids
}

// state reads a process's parent and whether it is a zombie.
func state(pid int) (ppid int, zombie bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[0] == "Z"
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// truncComm is command as the kernel keeps it in comm: 15 bytes at most.
func truncComm(command string) string {
	if len(command) > 15 {
		return command[:15]
	}
	return command
}
