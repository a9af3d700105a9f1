package main

import (
	"os"
	"os/exec"
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// TestQuickRunIO runs --io --quick: every fio job on both sides, for ext4
// and xfs, with positive figures and nothing left behind. It asserts no
// ratio.
func TestQuickRunIO(t *testing.T) {
	requireSystem(t)
	requireFio(t)
	cfg := defaultConfig()
	cfg.IO = true
	cfg.ioDefaults(map[string]bool{}, true)
	checkIO(t, cfg, quickRun(t, cfg))
}

// TestQuickRunIORBD is TestQuickRunIO with --backend rbd: rbd-fuse on a
// throwaway Ceph cluster, through the driver and by hand.
func TestQuickRunIORBD(t *testing.T) {
	requireSystem(t)
	testenv.Require(t, cephtest.Missing())
	requireFio(t)
	cfg := defaultConfig()
	cfg.Backend = "rbd"
	cfg.IO = true
	cfg.ioDefaults(map[string]bool{}, true)
	cfg.rbdDefaults(nil, true)
	checkIO(t, cfg, quickRun(t, cfg))
}

func requireFio(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("fio"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but the I/O benchmark cannot run: needs fio (scripts/install-deps)")
		}
		t.Skip("needs fio (scripts/install-deps)")
	}
}

func checkIO(t *testing.T, cfg config, rep *Report) {
	t.Helper()
	if len(rep.Modes) != 0 || rep.RSS != nil || len(rep.IO) != 2 {
		t.Fatalf("report has %d lifecycle modes, memory %v, %d io reports; want only io for ext4 and xfs", len(rep.Modes), rep.RSS, len(rep.IO))
	}
	for _, r := range rep.IO {
		if len(r.Jobs) != len(ioJobs) {
			t.Errorf("%s: %d jobs, want %d", r.FS, len(r.Jobs), len(ioJobs))
		}
		for _, j := range r.Jobs {
			if len(j.Sides) != 2 || j.Sides[0].Side != "driver" || j.Sides[1].Side != "raw" {
				t.Fatalf("%s %s: sides %+v, want driver and raw", r.FS, j.Job, j.Sides)
			}
			for _, s := range j.Sides {
				if len(s.IOPS) != cfg.IORounds || s.MedianIOPS <= 0 || s.MedianMiBs <= 0 {
					t.Errorf("%s %s %s: %+v", r.FS, j.Job, s.Side, s)
				}
			}
			if d := j.Sides[0]; d.Ratio <= 0 || d.WithinTarget == nil {
				t.Errorf("%s %s: ratio %v", r.FS, j.Job, d.Ratio)
			}
		}
	}
	rep.print(t.Output())
}
