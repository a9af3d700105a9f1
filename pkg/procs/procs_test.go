package procs

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestServing(t *testing.T) {
	last := filepath.Join(t.TempDir(), "mnt")
	// A shell that stays itself (no exec of its last command), with last as
	// its last argument.
	cmd := exec.Command("sh", "-c", "sleep 60; :", "sh", last)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := Serving("sh", last); !slices.Equal(got, []int{cmd.Process.Pid}) {
		t.Errorf("Serving(sh, %s) = %v, want [%d]", last, got, cmd.Process.Pid)
	}
	if got := Serving("sh", last+"x"); len(got) != 0 {
		t.Errorf("another last argument matched: %v", got)
	}
	if got := Serving("ceph-fuse", last); len(got) != 0 {
		t.Errorf("another command matched: %v", got)
	}
}
