package main

import (
	"context"
	"maps"
	"os"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// requireSystem skips the test when the machine cannot run the benchmark,
// and fails instead when CI=true: there the benchmark must run.
func requireSystem(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "truncate", "losetup", "mkfs.ext4", "mount", "umount")
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestQuickRun runs the benchmark in --quick mode and checks that it
// produces figures and leaves nothing behind. It asserts no timings.
func TestQuickRun(t *testing.T) {
	requireSystem(t)
	cfg := defaultConfig()
	cfg.applyQuick(nil)
	rep := quickRun(t, cfg)
	checkModes(t, rep, cfg, 8, 7)
	if rep.RSS == nil || rep.RSS.VmRSSKiB <= 0 || rep.RSS.Volumes != cfg.RSSVolumes {
		t.Errorf("memory figure: %+v", rep.RSS)
	}
	rep.print(t.Output())
}

// TestQuickRunStore runs the benchmark with --store on a small store: the
// filler volumes are created (3 at a time) and timed, the driver restarted
// on them, the calls beside the lifecycle timed, and the usual tables
// follow. It asserts no timings.
func TestQuickRunStore(t *testing.T) {
	requireSystem(t)
	cfg := defaultConfig()
	cfg.applyQuick(nil)
	cfg.Volumes, cfg.RSSVolumes, cfg.FillParallel = 2, 0, 3
	n := 30
	cfg.Store = &n
	rep := quickRun(t, cfg)
	checkModes(t, rep, cfg, 8, 7)
	st := rep.Store
	if st == nil || st.Volumes != n || st.Parallel != 3 || st.Create.Samples != n || st.Create.P50ms <= 0 || st.Create.P95ms <= 0 ||
		st.FillSeconds <= 0 || st.RestartMs <= 0 {
		t.Fatalf("store figures: %+v", st)
	}
	if len(st.Calls) != 6 {
		t.Fatalf("%d calls timed beside the lifecycle, want 6: %+v", len(st.Calls), st.Calls)
	}
	for _, c := range st.Calls {
		if c.Samples != cfg.Volumes || c.P50ms <= 0 {
			t.Errorf("%s: %+v, want %d samples and positive figures", c.Step, c, cfg.Volumes)
		}
	}
	rep.print(t.Output())
}

// TestQuickRunAlternate runs --store --alternate on a small store, filled
// through the driver's controller 3 at a time: every call timed on both
// stores in every round, with a ratio, and the page of ListVolumes full
// on the filled store only. It asserts no timings.
func TestQuickRunAlternate(t *testing.T) {
	requireSystem(t)
	cfg := defaultConfig()
	n := 120
	cfg.Store, cfg.Alternate, cfg.FillParallel = &n, true, 3
	cfg.alternateDefaults(nil, true)
	rep := quickRun(t, cfg)
	checkAlternate(t, rep, n, 1, "driver")
	if rep.Alternate.FillParallel != 3 {
		t.Errorf("filled %d at a time, want 3", rep.Alternate.FillParallel)
	}
	rep.print(t.Output())
}

// TestAlternateConfig: --alternate needs --store and a backend with a
// store; records go straight into the index of rbd only.
func TestAlternateConfig(t *testing.T) {
	n := 10
	for _, c := range []struct {
		backend, fill string
		store         *int
		io, ok        bool
	}{
		{"loop", "driver", &n, false, true},
		{"rbd", "driver", &n, false, true},
		{"rbd", "index", &n, false, true},
		{"loop", "index", &n, false, false},
		{"rbd", "records", &n, false, false},
		{"loop", "driver", nil, false, false},
		{"loop", "driver", &n, true, false},
		{"hcloud", "driver", &n, false, false},
	} {
		cfg := defaultConfig()
		cfg.Backend, cfg.Store, cfg.IO, cfg.Alternate = c.backend, c.store, c.io, true
		cfg.alternateDefaults(map[string]bool{"fill": true}, false)
		cfg.Fill = c.fill
		if c.backend == "hcloud" {
			cfg.hcloudDefaults(nil)
		}
		if c.io {
			cfg.ioDefaults(nil, true)
		}
		if err := cfg.validate(); (err == nil) != c.ok {
			t.Errorf("%s, --fill %s, --store %v, --io %v: %v", c.backend, c.fill, c.store != nil, c.io, err)
		}
	}
	cfg := defaultConfig()
	cfg.Backend = "rbd"
	cfg.alternateDefaults(nil, false)
	if cfg.Fill != "index" || cfg.AltRounds != 200 {
		t.Errorf("rbd defaults: --fill %s, %d rounds", cfg.Fill, cfg.AltRounds)
	}
}

// checkAlternate checks the figures of --alternate with n volumes, of
// which every 50th is attached to another node.
func checkAlternate(t *testing.T, rep *Report, n, otherNodes int, fill string) {
	t.Helper()
	a := rep.Alternate
	if a == nil || len(rep.Modes) != 0 || rep.Store != nil {
		t.Fatalf("report: %+v; want the alternate figures alone", rep)
	}
	if a.Volumes != n || a.Attached != (n+49)/50 || a.OtherNodes != otherNodes || a.Fill != fill || a.FillSeconds <= 0 || a.Rounds != 5 {
		t.Errorf("alternate: %+v", a)
	}
	if len(a.Calls) != len(altCalls) {
		t.Fatalf("%d calls, want %d", len(a.Calls), len(altCalls))
	}
	for i, c := range a.Calls {
		if c.Call != altCalls[i] || c.Empty.Samples != a.Rounds || c.Full.Samples != a.Rounds ||
			c.Empty.P50ms <= 0 || c.Full.P50ms <= 0 || c.Ratio != c.Full.P50ms/c.Empty.P50ms {
			t.Errorf("%s: %+v", altCalls[i], c)
		}
	}
	if e := a.Calls[len(a.Calls)-1].Entries; e != [2]int{0, altPage} {
		t.Errorf("ListVolumes pages held %v entries, want none on the empty store and %d on the other", e, altPage)
	}
}

// TestQuickRunRBD runs the rbd benchmark in --quick mode against a
// throwaway Ceph cluster: figures for both sides, nothing left behind.
func TestQuickRunRBD(t *testing.T) {
	requireSystem(t)
	testenv.Require(t, cephtest.Missing())
	cfg := defaultConfig()
	cfg.Backend = "rbd"
	cfg.applyQuick(nil)
	cfg.rbdDefaults(nil, true)
	cfg.Size = 256 * mib
	rep := quickRun(t, cfg)
	// Raw: rbd create, rbd-fuse, losetup, mkfs, mount and their undo.
	checkModes(t, rep, cfg, 8, 9)
	if rep.RSS == nil || rep.RSS.IdleKiB <= 0 || rep.RSS.VmRSSKiB <= 0 || rep.RSS.AttachProcesses != cfg.RSSVolumes || rep.RSS.AttachKiB <= 0 {
		t.Errorf("memory figure: %+v; want the driver's idle and loaded figures and one rbd-fuse per volume", rep.RSS)
	}
	for _, m := range rep.Modes {
		if m.BackendCalls < 5 || m.BackendCallsByName["rbd image-meta set"] == 0 {
			t.Errorf("%s: Ceph calls per lifecycle %v (%v)", m.Mode, m.BackendCalls, m.BackendCallsByName)
		}
	}
	rep.print(t.Output())
}

// quickRun runs the benchmark and checks it leaves nothing behind.
func quickRun(t *testing.T, cfg config) *Report {
	t.Helper()
	cfg.Driver = os.Getenv("SWARM_CSI_DRIVER") // a prebuilt binary; default: build it
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	rep, err := run(ctx, cfg, t.Output())
	if rep != nil {
		if mounts, loops, lerr := leftovers(rep.Dir); lerr != nil || len(mounts)+len(loops) > 0 {
			t.Errorf("left behind under %s: mounts %v, loop devices %v (%v)", rep.Dir, mounts, loops, lerr)
		}
		if exists(rep.Dir) {
			t.Errorf("temp dir %s not removed", rep.Dir)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Leftovers) > 0 {
		t.Errorf("teardown left %v behind (removed by the sweep)", rep.Leftovers)
	}
	return rep
}

// checkModes checks the sequential and parallel figures of both sides.
func checkModes(t *testing.T, rep *Report, cfg config, driverSteps, rawSteps int) {
	t.Helper()
	if len(rep.Modes) != 2 {
		t.Fatalf("got %d modes, want sequential and parallel", len(rep.Modes))
	}
	for _, m := range rep.Modes {
		for _, s := range []struct {
			name  string
			r     SideReport
			steps int
		}{{"driver", m.Driver, driverSteps}, {"raw", m.Raw, rawSteps}} {
			if len(s.r.Steps) != s.steps {
				t.Errorf("%s %s: %d steps, want %d", m.Mode, s.name, len(s.r.Steps), s.steps)
			}
			for _, st := range append(s.r.Steps, s.r.Lifecycle) {
				if st.Samples != cfg.Volumes || st.P50ms <= 0 || st.P95ms <= 0 {
					t.Errorf("%s %s %s: %+v, want %d samples and positive figures", m.Mode, s.name, st.Step, st, cfg.Volumes)
				}
			}
			if s.r.WallSeconds <= 0 || s.r.VolumesPerSec <= 0 {
				t.Errorf("%s %s: wall %v s, %v volumes/s", m.Mode, s.name, s.r.WallSeconds, s.r.VolumesPerSec)
			}
		}
		if m.RatioP50 <= 0 || m.RatioP95 <= 0 {
			t.Errorf("%s: ratios p50 %v p95 %v, want > 0", m.Mode, m.RatioP50, m.RatioP95)
		}
	}
}

// TestQuickRunHcloud runs the hcloud benchmark in --quick mode on the fake
// cloud with short actions, and checks that it produces figures, counts
// API requests (by route and, one lifecycle at a time, by CSI call) and
// leaves nothing behind. It asserts no timings.
func TestQuickRunHcloud(t *testing.T) {
	requireSystem(t)
	cfg := defaultConfig()
	cfg.Backend = "hcloud"
	cfg.applyQuick(nil)
	cfg.hcloudDefaults(map[string]bool{"action-delay": true, "other-volumes": true})
	cfg.ActionDelays = durations{50 * time.Millisecond, 0}
	cfg.OtherVolumes = 100
	rep := quickRun(t, cfg)
	if len(rep.Modes) != 0 || rep.RSS != nil || len(rep.Cloud) != 8 {
		t.Fatalf("report has %d loop modes, memory %v, %d cloud modes; want only the 4 cloud modes at 2 delays", len(rep.Modes), rep.RSS, len(rep.Cloud))
	}
	withoutPolls := func(m CloudModeReport) map[string]float64 {
		out := maps.Clone(m.APICallsByRoute)
		delete(out, "GET /actions")
		return out
	}
	for i, m := range rep.Cloud {
		if want := []string{"first", "sequential", "crowded", "parallel"}[i%4]; m.Mode != want {
			t.Errorf("mode %d is %s, want %s", i, m.Mode, want)
		}
		n := cfg.Volumes
		if m.Mode == "first" {
			n = 1
		}
		if len(m.Driver.Steps) != 8 {
			t.Errorf("%s: %d steps, want 8", m.Mode, len(m.Driver.Steps))
		}
		for _, st := range append(m.Driver.Steps, m.Driver.Lifecycle, m.Publish) {
			if st.Samples != n || st.P50ms <= 0 || st.P95ms <= 0 {
				t.Errorf("%s %s: %+v, want %d samples and positive figures", m.Mode, st.Step, st, n)
			}
		}
		// Every lifecycle creates, attaches, detaches and deletes. In
		// parallel an attach or detach may meet the server locked by
		// another and be asked again. No call lists the volumes.
		for _, route := range []string{"POST /volumes", "POST /volumes/{id}/actions/attach", "POST /volumes/{id}/actions/detach", "DELETE /volumes/{id}"} {
			got := m.APICallsByRoute[route]
			if got < 1 || (m.Parallel == 1 && got != 1) {
				t.Errorf("%s: %v %s per lifecycle, want 1 (at least 1 in parallel)", m.Mode, got, route)
			}
		}
		if m.APICallsByRoute["GET /volumes"] != 0 {
			t.Errorf("%s: %v listings per lifecycle", m.Mode, m.APICallsByRoute["GET /volumes"])
		}
		// One read of the volume: the unpublish's, before the detach; the
		// publish attaches the volume it has just created unread.
		if got := m.APICallsByRoute["GET /volumes/{id}"]; m.Parallel == 1 && got != 1 {
			t.Errorf("%s: %v reads of a volume per lifecycle, want 1", m.Mode, got)
		}
		if m.Parallel == 1 {
			sum := 0.0
			for _, k := range m.APICallsByRPC {
				sum += k
			}
			if sum != m.APICalls {
				t.Errorf("%s: requests by CSI call %v add up to %v, not %v", m.Mode, m.APICallsByRPC, sum, m.APICalls)
			}
		}
		if m.APICalls < 4 || m.ActionFloorMs != 3*m.ActionDelayMs {
			t.Errorf("%s: %v API calls per lifecycle, action floor %v ms", m.Mode, m.APICalls, m.ActionFloorMs)
		}
		if m.Mode == "crowded" {
			if seq := rep.Cloud[i-1]; !maps.Equal(withoutPolls(m), withoutPolls(seq)) || m.OtherVolumes != 100 {
				t.Errorf("with %d other volumes: %v, without: %v", m.OtherVolumes, m.APICallsByRoute, seq.APICallsByRoute)
			}
		}
	}
	rep.print(t.Output())
}
