package ops

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// healthyWorld is newWorld without its faults: pgdata published here,
// cache on n-far (which serves metrics), idle published nowhere.
func healthyWorld(t *testing.T) *world {
	w := newWorld(t)
	for _, name := range []string{"lost", "gone", "pending"} {
		delete(w.engine.vols, name)
	}
	delete(w.csi.vols, "vol-4")
	delete(w.csi.vols, "vol-orphan")
	return w
}

// doctor runs doctor --format json, which must exit with code, and
// returns its report.
func (w *world) doctor(code int) doctorReport {
	w.t.Helper()
	got := w.run("--format", "json", "doctor")
	var r doctorReport
	if err := json.Unmarshal(w.stdout.Bytes(), &r); err != nil {
		w.t.Fatalf("doctor --format json: %v\n%s\n%s", err, &w.stdout, &w.stderr)
	}
	if got != code || r.OK != (code == 0) {
		w.t.Fatalf("doctor: exit %d (ok %t), want %d:\n%s%s", got, r.OK, code, &w.stdout, &w.stderr)
	}
	return r
}

// wantFinding fails unless the report has a finding of level about
// subject whose problem and fix contain problem and fix.
func wantFinding(t *testing.T, r doctorReport, level, subject, problem, fix string) {
	t.Helper()
	for _, f := range r.Findings {
		if f.Level == level && f.Subject == subject && strings.Contains(f.Problem, problem) && strings.Contains(f.Fix, fix) {
			return
		}
	}
	t.Errorf("no %s finding on %s with %q, fix %q; findings:\n%+v", level, subject, problem, fix, r.Findings)
}

func TestDoctorHealthy(t *testing.T) {
	w := healthyWorld(t)
	r := w.doctor(0)
	if len(r.Findings) != 0 {
		t.Errorf("findings on a healthy swarm: %+v", r.Findings)
	}
	for _, want := range []string{"Engine version of 2 node(s)", "metrics endpoint", "3 Swarm volume(s)", "0 volume(s) pending creation", "2 publication(s)"} {
		if !containsSub(r.Checked, want) {
			t.Errorf("checked %q, want a line with %q", r.Checked, want)
		}
	}
	w.want(0, "ok: nothing is wrong", "doctor")
	if c := w.changes(); len(c) != 0 || len(w.engine.changes) != 0 {
		t.Errorf("doctor changed %v %v", c, w.engine.changes)
	}
	w.want(2, "usage: swarm-csi", "doctor", "now")
}

func containsSub(ls []string, sub string) bool {
	for _, l := range ls {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// Each fault alone: doctor fails (or warns) with its line.
func TestDoctorFindsEachFault(t *testing.T) {
	node := func(w *world, id string) *swarm.Node {
		n := w.engine.nodes[id]
		return &n
	}
	setNode := func(w *world, n *swarm.Node) { w.engine.nodes[n.ID] = *n }
	publish := func(w *world, name, id, nodeID string) {
		w.engine.vols[name] = &volume.Volume{Name: name, Driver: "swarm-csi:latest", ClusterVolume: &volume.ClusterVolume{ID: "cv-" + name,
			Info: &volume.Info{VolumeID: id}, PublishStatus: []*volume.PublishStatus{{NodeID: nodeID, State: volume.StatePublished}}}}
		w.csi.vols[id] = &csi.Volume{VolumeId: id, CapacityBytes: 1 << 30}
	}
	for _, tc := range []struct {
		name                         string
		fault                        func(w *world)
		code                         int
		level, subject, problem, fix string
	}{
		{"engine on a manager loses the plugin", func(w *world) {
			n := node(w, "n-here")
			n.Description.Engine.EngineVersion = "27.5.1"
			setNode(w, n)
		}, 1, levelFail, "manager", "Engine 27.5.1 on a manager loses the plugin's address", "upgrade Docker Engine on manager to 28.2 or later"},
		{"engine without cluster volumes", func(w *world) {
			n := node(w, "n-far")
			n.Description.Engine.EngineVersion = "20.10.24+dfsg1"
			setNode(w, n)
		}, 1, levelFail, "worker", "Engine 20.10.24+dfsg1 has no cluster volumes", "upgrade Docker Engine on worker"},
		{"a worker of 27.5 is fine", func(w *world) {
			n := node(w, "n-far")
			n.Description.Engine.EngineVersion = "27.5.1"
			setNode(w, n)
		}, 0, "", "", "", ""},
		{"engine version unreadable", func(w *world) {
			n := node(w, "n-far")
			n.Description.Engine.EngineVersion = "dev"
			setNode(w, n)
		}, 0, levelWarn, "worker", `Engine version "dev" cannot be read`, ""},
		{"plugin disabled here", func(w *world) {
			w.engine.plugins["swarm-csi:latest"].Enabled = false
		}, 1, levelFail, "swarm-csi:latest", "disabled on this node", "docker plugin enable swarm-csi:latest"},
		{"plugin missing on a node", func(w *world) {
			n := node(w, "n-far")
			n.Description.Engine.Plugins, n.Description.CSIInfo = nil, nil
			setNode(w, n)
		}, 1, levelFail, "worker", "not installed or not enabled there", "docker plugin install (or enable) swarm-csi:latest"},
		{"plugin enabled after the join", func(w *world) {
			n := node(w, "n-far")
			n.Description.CSIInfo = nil
			setNode(w, n)
		}, 1, levelFail, "worker", "no CSI node id for swarm-csi:latest in docker node inspect", "restart Docker on worker"},
		{"no CAP_SYS_RESOURCE", func(w *world) {
			w.engine.plugins["swarm-csi:latest"].Config.Linux.Capabilities = []string{"CAP_SYS_ADMIN"}
		}, 0, levelWarn, "swarm-csi:latest", "lacks CAP_SYS_RESOURCE", "deploy/build-plugin"},
		{"no metrics", func(w *world) {
			w.engine.plugins["swarm-csi:latest"].Settings.Env = []string{"DATA_DIR=/data"}
		}, 0, levelWarn, "swarm-csi:latest", "METRICS_ADDR is not set", "docker plugin set swarm-csi:latest METRICS_ADDR=:9464"},
		{"metrics unreachable", func(w *world) {
			n := node(w, "n-far")
			n.Status.Addr = "127.0.0.3"
			setNode(w, n)
		}, 1, levelFail, "worker", "127.0.0.3", "METRICS_ADDR=:"},
		{"another storage on a node", func(w *world) {
			w.farSettings = map[string]string{"backend": "loop", "storage": "swarm-csi/store=s2"}
		}, 1, levelFail, "worker", `its plugin has storage="swarm-csi/store=s2", this node's "swarm-csi/store=s1"`, "data.source on the shared filesystem"},
		{"another backend on a node", func(w *world) {
			w.farSettings = map[string]string{"backend": "dir", "storage": "swarm-csi/store=s1"}
		}, 1, levelFail, "worker", `its plugin has backend="dir", this node's "loop"`, "docker plugin set swarm-csi:latest with this node's BACKEND"},
		{"another version on a node", func(w *world) {
			w.farSettings = map[string]string{"backend": "loop", "storage": "swarm-csi/store=s1", "version": "v0.9"}
		}, 0, levelWarn, "worker", "its plugin is version v0.9, this node's v1", "install the same plugin on every node"},
		{"pending with the driver's error", func(w *world) {
			w.engine.vols["db"] = &volume.Volume{Name: "db", Driver: "swarm-csi:latest", ClusterVolume: &volume.ClusterVolume{ID: "cv-db"}}
			at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			w.csi.failed = []controller.CreateError{{Name: "db", Code: "InvalidArgument", Message: `fsType "zfs": want ext4 or xfs`,
				First: at, Last: at.Add(time.Minute), Attempts: 7}}
		}, 1, levelFail, "db", `refused it 7 time(s) since 2026-01-02T03:04:05Z, last at 2026-01-02T03:05:05Z: InvalidArgument: fsType "zfs": want ext4 or xfs`,
			"docker volume rm --force db, then create it again"},
		{"pending without an error here, on the leader", func(w *world) {
			w.engine.vols["db"] = &volume.Volume{Name: "db", Driver: "swarm-csi:latest", ClusterVolume: &volume.ClusterVolume{ID: "cv-db"}}
		}, 1, levelFail, "db", "the manager has not called it", "docker volume inspect db"},
		{"pending, just created", func(w *world) {
			w.engine.vols["db"] = &volume.Volume{Name: "db", Driver: "swarm-csi:latest",
				ClusterVolume: &volume.ClusterVolume{ID: "cv-db", Meta: swarm.Meta{CreatedAt: time.Now().Add(-3 * time.Second)}}}
		}, 0, levelWarn, "db", "pending creation for 3s: Swarm has not called the plugin yet", "run swarm-csi doctor again"},
		{"pending without an error here, not the leader", func(w *world) {
			w.engine.vols["db"] = &volume.Volume{Name: "db", Driver: "swarm-csi:latest", ClusterVolume: &volume.ClusterVolume{ID: "cv-db"}}
			n := node(w, "n-far")
			n.ManagerStatus = &swarm.ManagerStatus{Leader: true}
			setNode(w, n)
			n = node(w, "n-here")
			n.ManagerStatus.Leader = false
			setNode(w, n)
		}, 1, levelFail, "db", "run swarm-csi doctor on worker", ""},
		{"published to a node that is down", func(w *world) {
			n := node(w, "n-far")
			n.Status.State = swarm.NodeStateDown
			setNode(w, n)
		}, 1, levelFail, "cache", "published to worker (n-far), which is down", "docker node rm --force n-far"},
		{"published to a node that is gone", func(w *world) {
			publish(w, "lost", "vol-4", "n-lost")
		}, 1, levelFail, "lost", "node n-lost, which is not in the swarm any more", "swarm-csi volume release lost"},
		{"published to a node whose plugin lets go", func(w *world) {
			publish(w, "stuck", "vol-5", "n-far") // n-far's metrics know only vol-2
		}, 1, levelFail, "stuck", "published to worker, whose plugin does not hold it", "swarm-csi volume release stuck"},
		{"published here, not mounted here", func(w *world) {
			w.csi.abnormal["vol-1"] = "NotMounted"
		}, 1, levelFail, "pgdata", "published to manager, whose plugin does not hold it", "swarm-csi volume release pgdata"},
		{"an orphan", func(w *world) {
			w.csi.vols["vol-orphan"] = &csi.Volume{VolumeId: "vol-orphan"}
		}, 1, levelFail, "vol-orphan", "a disk no Swarm volume refers to", "swarm-csi volume rm-orphan vol-orphan"},
		{"missing in the backend", func(w *world) {
			delete(w.csi.vols, "vol-3")
		}, 1, levelFail, "idle", "which the backend does not hold", "docker volume rm --force idle"},
		{"a snapshot whose volume is gone", func(w *world) {
			w.csi.snaps["old"] = &csi.Snapshot{SnapshotId: "snap-old", SourceVolumeId: "vol-77", CreationTime: timestamppb.Now()}
		}, 0, levelWarn, "snap-old", "its volume vol-77 is gone", "swarm-csi snapshot rm snap-old"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := healthyWorld(t)
			tc.fault(w)
			r := w.doctor(tc.code)
			if tc.level == "" {
				if len(r.Findings) != 0 {
					t.Errorf("findings: %+v", r.Findings)
				}
				return
			}
			wantFinding(t, r, tc.level, tc.subject, tc.problem, tc.fix)
			same := 0
			for _, f := range r.Findings {
				if f.Level == tc.level {
					same++
				}
			}
			if same != 1 {
				t.Errorf("%d findings of level %s, want this one alone: %+v", same, tc.level, r.Findings)
			}
			// The table says the same.
			out := w.stdout.String()
			w.run("doctor")
			t.Logf("doctor:\n%s", &w.stdout)
			if table := w.stdout.String(); !strings.Contains(table, tc.level+" ") || !strings.Contains(table, tc.problem) {
				t.Errorf("the table lacks the finding:\n%s\n(json: %s)", table, out)
			}
		})
	}
}

// A command on a volume pending creation says why, from the driver's
// record.
func TestPendingVolumeSaysWhy(t *testing.T) {
	w := newWorld(t)
	w.want(1, "volume pending is not created yet (docker volume inspect pending; swarm-csi doctor)", "volume", "inspect", "pending")
	w.csi.failed = []controller.CreateError{{Name: "pending", Code: "NotFound", Message: "snapshot nightly not found",
		Last: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Attempts: 4}}
	w.want(1, "volume pending is not created yet: the driver refused it 4 time(s), last at 2026-01-02T03:04:05Z: NotFound: snapshot nightly not found",
		"volume", "inspect", "pending")
}
