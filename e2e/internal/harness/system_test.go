package harness

import (
	"os"
	"testing"
)

// ListProcs reads each process's state and parent: this one is running
// or sleeping, a child of the go command.
func TestListProcsState(t *testing.T) {
	for _, p := range ListProcs() {
		if p.Pid != os.Getpid() {
			continue
		}
		if p.State != "R" && p.State != "S" {
			t.Fatalf("this process: state %q, want R or S", p.State)
		}
		if p.PPid != os.Getppid() {
			t.Fatalf("this process: parent %d, want %d", p.PPid, os.Getppid())
		}
		return
	}
	t.Fatal("this process is not listed")
}
