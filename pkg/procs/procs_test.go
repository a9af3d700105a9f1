package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
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

// A daemon that ended is not a live one, and its parent, this process,
// reaps it.
func TestServingReapsEnded(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ceph-fuse")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "/mnt/x")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, zombie := state(pid); zombie {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not end", pid)
		}
	}
	if p := Serving("ceph-fuse", "/mnt/x"); len(p) != 0 {
		t.Errorf("Serving counts the ended ceph-fuse: %v", p)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("the ended ceph-fuse %d was not reaped", pid)
	}
}
