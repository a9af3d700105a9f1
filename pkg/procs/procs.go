// Package procs finds the processes a driver started, by their command
// line, so that a restarted driver finds those an earlier one left.
package procs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Serving returns the pids of the processes running command (its base
// name) whose last argument is last: a FUSE daemon and its mount point.
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
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == command && args[len(args)-1] == last {
			pids = append(pids, pid)
		}
	}
	return pids
}
