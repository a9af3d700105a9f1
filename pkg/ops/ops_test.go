package ops

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit status: 0 done, 1 failed with nothing changed, 2 bad usage (with
// the usage).
func TestExitStatus(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct {
		code int
		want string
		args []string
	}{
		{0, "pgdata", []string{"volume", "ls"}},
		{0, "vol-1", []string{"volume", "inspect", "pgdata"}},
		{0, "SNAPSHOT ID", []string{"snapshot", "ls"}},
		{1, "no volume nope (docker volume ls --cluster lists them)", []string{"volume", "inspect", "nope"}},
		{1, "volume logs belongs to driver local, not swarm-csi:latest", []string{"volume", "expand", "logs", "2G"}},
		{1, "volume pending is not created yet", []string{"volume", "stats", "pending"}},
		{1, "volume pgdata is 1GiB (1073741824 bytes): 512M is smaller; volumes do not shrink", []string{"volume", "expand", "pgdata", "512M"}},
		{1, "volume gone (vol-9): rpc error: code = NotFound", []string{"volume", "inspect", "gone"}},
		{1, "no snapshot nope (swarm-csi snapshot ls lists them)", []string{"snapshot", "rm", "nope"}},
		{1, "no volume nope", []string{"snapshot", "create", "nope", "s1"}},
		{1, "volume idle is not published on any node", []string{"volume", "stats", "idle"}},
		{2, "swarm-csi: usage: volume expand pgdata\nusage: swarm-csi [options] COMMAND", []string{"volume", "expand", "pgdata"}},
		{2, `size "huge": want a size such as 20G`, []string{"volume", "expand", "pgdata", "huge"}},
		{2, `size "-1G"`, []string{"volume", "expand", "pgdata", "-1G"}},
		{2, "usage: volume frob", []string{"volume", "frob"}},
		{2, "usage: snapshot ls a b", []string{"snapshot", "ls", "a", "b"}},
		{2, "usage: swarm-csi [options] COMMAND", []string{"volume"}},
		{2, "usage: swarm-csi [options] COMMAND", nil},
		{2, `--format "xml": want table or json`, []string{"--format", "xml", "volume", "ls"}},
		{2, "usage: swarm-csi stack volumes", []string{"stack"}},
		{2, "usage: swarm-csi stack volumes", []string{"stack", "volumes", "-c", "x.yml"}},
		{2, "are options of the volume, snapshot and doctor commands", []string{"--format", "json", "stack", "volumes", "-c", "x.yml", "--namespace", "st"}},
	} {
		w.want(tc.code, tc.want, tc.args...)
		if tc.code == 1 && !strings.Contains(w.stderr.String(), "swarm-csi: ") {
			t.Errorf("%v: the error does not name the command: %q", tc.args, &w.stderr)
		}
		if c := w.changes(); len(c) != 0 {
			t.Errorf("%v changed %v", tc.args, c)
		}
	}
}

// A Swarm volume name leads to its CSI volume id; the plugin's socket is
// found with docker plugin inspect of --plugin.
func TestNameResolution(t *testing.T) {
	w := newWorld(t)
	var got struct {
		Name       string   `json:"name"`
		VolumeID   string   `json:"volume_id"`
		SizeBytes  int64    `json:"size_bytes"`
		SwarmNodes []string `json:"swarm_nodes"`
		Abnormal   bool     `json:"abnormal"`
	}
	if err := json.Unmarshal([]byte(w.want(0, "", "--format", "json", "volume", "inspect", "pgdata")), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "pgdata" || got.VolumeID != "vol-1" || got.SizeBytes != 1<<30 || !slices.Equal(got.SwarmNodes, []string{"n-here"}) || got.Abnormal {
		t.Errorf("volume inspect pgdata: %+v", got)
	}

	// Another plugin: no such plugin; one installed, whose volumes these
	// are not; one disabled.
	w.want(1, "plugin other:latest: plugin \"other:latest\" not found", "--plugin", "other:latest", "volume", "inspect", "pgdata")
	p := *w.engine.plugins["swarm-csi:latest"]
	p.Name = "other:latest"
	w.engine.plugins[p.Name] = &p
	w.want(1, "volume pgdata belongs to driver swarm-csi:latest, not other:latest", "--plugin", "other:latest", "volume", "inspect", "pgdata")
	p.Enabled = false
	w.want(1, "plugin other:latest is disabled: docker plugin enable other:latest", "--plugin=other:latest", "volume", "ls")

	// --socket: the plugin's socket given, docker plugin inspect not needed.
	sock := filepath.Join(w.cli.PluginsDir, "p1", "csi.sock")
	w.engine.plugins = nil
	w.want(0, "vol-1", "--socket", sock, "volume", "inspect", "pgdata")
	w.want(1, "volume pgdata (vol-1): rpc error: code = Unavailable", "--socket", filepath.Join(t.TempDir(), "none.sock"), "volume", "inspect", "pgdata")
}

// volume ls: the backend's volumes beside Swarm's, each orphan with the
// command that deletes it; rm-orphan deletes only orphans.
func TestVolumeLsOrphans(t *testing.T) {
	w := newWorld(t)
	table := w.want(0, "NAME", "volume", "ls")
	for _, line := range []string{
		"NAME     VOLUME ID   SIZE  STATUS                  NODES\n",
		"cache    vol-2       2GiB  in use                  worker\n",
		"gone     vol-9       0B    missing in the backend  \n",
		"idle     vol-3       1GiB  created                 \n",
		"pending              0B    pending creation        \n",
		"pgdata   vol-1       1GiB  in use                  manager\n",
		"-        vol-orphan  3GiB  orphan                  \n",
		"orphan vol-orphan: no Swarm volume refers to it (docker volume rm --force, or a lost manager); delete it with: swarm-csi volume rm-orphan vol-orphan\n",
	} {
		if !strings.Contains(table, line) {
			t.Errorf("volume ls lacks %q:\n%s", line, table)
		}
	}
	if strings.Contains(table, "logs") {
		t.Errorf("volume ls shows a local volume:\n%s", table)
	}

	var rows []volumeRow
	if err := json.Unmarshal([]byte(w.want(0, "", "--format", "json", "volume", "ls")), &rows); err != nil {
		t.Fatal(err)
	}
	var orphans []volumeRow
	for _, r := range rows {
		if r.Orphan {
			orphans = append(orphans, r)
		}
	}
	if len(rows) != 7 || len(orphans) != 1 || orphans[0].VolumeID != "vol-orphan" || orphans[0].Remove != "swarm-csi volume rm-orphan vol-orphan" {
		t.Errorf("volume ls as JSON: %+v", rows)
	}

	w.want(1, "vol-1 is Swarm volume pgdata, not an orphan: docker volume rm pgdata", "volume", "rm-orphan", "vol-1")
	w.want(1, "volume vol-nope: rpc error: code = NotFound", "volume", "rm-orphan", "vol-nope")
	if c := w.changes(); len(c) != 0 {
		t.Fatalf("refused rm-orphan changed %v", c)
	}
	w.want(0, "deleted vol-orphan\n", "volume", "rm-orphan", "vol-orphan")
	if c := w.changes(); !slices.Equal(c, []string{"DeleteVolume vol-orphan"}) {
		t.Errorf("rm-orphan made %v", c)
	}
	if out := w.want(0, "pgdata", "volume", "ls"); strings.Contains(out, "orphan") {
		t.Errorf("volume ls after rm-orphan:\n%s", out)
	}
}

// volume expand grows the disk, and the filesystem on this node at once.
func TestVolumeExpand(t *testing.T) {
	w := newWorld(t)
	w.want(0, "volume pgdata: 2147483648 bytes (was 1073741824)\nnode n-here (this one): filesystem grown, the device has 2147483648 bytes\n",
		"volume", "expand", "pgdata", "2G")
	if c := w.changes(); !slices.Equal(c, []string{"ControllerExpandVolume vol-1", "NodeExpandVolume vol-1 /data/published/cv-pgdata"}) {
		t.Errorf("expand pgdata made %v", c)
	}
	w.want(0, "node n-far: its plugin grows the filesystem on its own (within --grow-interval)\n", "volume", "expand", "cache", "3G")
	w.want(0, "not in use: the filesystem grows when the volume is next mounted\n", "volume", "expand", "idle", "1G")
	if c := w.changes(); !slices.Equal(c, []string{"ControllerExpandVolume vol-2", "ControllerExpandVolume vol-3"}) {
		t.Errorf("expand cache and idle made %v", c)
	}
	w.want(0, "2GiB (2147483648 bytes)", "volume", "inspect", "pgdata")

	// The disk grew, its filesystem here did not: exit 1, saying which.
	w.csi.growErr = status.Error(codes.Internal, "xfs_growfs: no CAP_SYS_RESOURCE")
	w.want(1, "swarm-csi: volume pgdata grew, but its filesystem on this node did not: rpc error: code = Internal desc = xfs_growfs: no CAP_SYS_RESOURCE",
		"volume", "expand", "pgdata", "3G")
	if !strings.Contains(w.stdout.String(), "volume pgdata: 3221225472 bytes (was 2147483648)\n") {
		t.Errorf("expand without the filesystem: %q", &w.stdout)
	}
}

// volume stats: this node through the plugin's socket, another through
// its plugin's metrics, a node that cannot be asked listed with the
// reason (then exit 1).
func TestVolumeStats(t *testing.T) {
	w := newWorld(t)
	var got struct {
		VolumeID string      `json:"volume_id"`
		Nodes    []nodeStats `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(w.want(0, "", "--format", "json", "volume", "stats", "cache")), &got); err != nil {
		t.Fatal(err)
	}
	far := got.Nodes[0]
	if got.VolumeID != "vol-2" || len(got.Nodes) != 1 || far.Node != "n-far" || far.Hostname != "worker" ||
		!strings.HasSuffix(far.From, "/metrics") || far.Abnormal || far.Error != "" ||
		!slices.Equal(far.Usage, []usage{{"bytes", 2 << 30, 300 << 20, 1 << 30}, {"inodes", 1000, 40, 960}}) {
		t.Errorf("volume stats cache: %+v", got)
	}

	table := w.want(0, "NODE    HOSTNAME  UNIT    TOTAL       USED       AVAILABLE  CONDITION\n", "volume", "stats", "pgdata")
	for _, line := range []string{
		"n-here  manager   bytes   1073741824  104857600  968884224  normal\n",
		"n-here  manager   inodes  65536       11         65525      normal\n",
	} {
		if !strings.Contains(table, line) {
			t.Errorf("volume stats pgdata lacks %q:\n%s", line, table)
		}
	}
	w.csi.abnormal["vol-1"] = "NotMounted"
	w.want(0, "n-here  manager   -     -      -     -          ABNORMAL: NotMounted: it is gone\n", "volume", "stats", "pgdata")

	// A node the Engine does not know, and metrics off: listed, exit 1.
	if w.run("volume", "stats", "lost"); !strings.Contains(w.stdout.String(), "n-lost            -     -      -     -          unknown\nnode n-lost: node n-lost: node n-lost not found\n") ||
		!strings.Contains(w.stderr.String(), "volume lost: 1 of the 1 nodes it is published on could not be asked") {
		t.Errorf("volume stats lost:\n%s%s", &w.stdout, &w.stderr)
	}
	w.engine.plugins["swarm-csi:latest"].Settings.Env = nil
	w.want(1, "could not be asked", "volume", "stats", "cache")
	if !strings.Contains(w.stdout.String(), "node n-far: other nodes answer through their plugin's metrics, which are off (METRICS_ADDR is empty)") {
		t.Errorf("volume stats cache without metrics:\n%s", &w.stdout)
	}
}

// Snapshots by the names they were created with.
func TestSnapshots(t *testing.T) {
	w := newWorld(t)
	w.want(0, "snapshot before of pgdata: snap-before, 1073741824 bytes, in ", "snapshot", "create", "pgdata", "before")
	w.want(1, "snapshot before exists already (snap-before of volume id vol-1, ", "snapshot", "create", "idle", "before")
	w.want(0, "snapshot other of idle: snap-other", "snapshot", "create", "idle", "other")
	if c := w.changes(); !slices.Equal(c, []string{"CreateSnapshot before", "CreateSnapshot other"}) {
		t.Errorf("snapshot create made %v", c)
	}

	table := w.want(0, "SNAPSHOT ID  SOURCE VOLUME ID  SIZE  CREATED", "snapshot", "ls", "pgdata")
	if !strings.Contains(table, "snap-before  vol-1             1GiB  ") || strings.Contains(table, "snap-other") {
		t.Errorf("snapshot ls pgdata:\n%s", table)
	}
	var rows []struct {
		SnapshotID string `json:"snapshot_id"`
		Source     string `json:"source_volume_id"`
		Ready      bool   `json:"ready"`
	}
	if err := json.Unmarshal([]byte(w.want(0, "", "--format", "json", "snapshot", "ls")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].SnapshotID != "snap-before" || rows[0].Source != "vol-1" || !rows[0].Ready || rows[1].Source != "vol-3" {
		t.Errorf("snapshot ls as JSON: %+v", rows)
	}

	w.want(0, "deleted before (snap-before)\n", "snapshot", "rm", "before")
	w.want(0, "deleted snap-other (snap-other)\n", "snapshot", "rm", "snap-other")
	w.want(1, "no snapshot before", "snapshot", "rm", "before")
	if c := w.changes(); !slices.Equal(c, []string{"DeleteSnapshot snap-before", "DeleteSnapshot snap-other"}) {
		t.Errorf("snapshot rm made %v", c)
	}
}

// stack volumes creates a compose file's cluster volumes, once.
func TestStackVolumes(t *testing.T) {
	w := newWorld(t)
	file := filepath.Join(t.TempDir(), "stack.yml")
	compose := `services:
  db: {image: busybox, volumes: [{type: cluster, source: data, target: /data}]}
volumes:
  data:
    driver: swarm-csi:latest
    x-cluster-spec:
      access_mode: {scope: single, sharing: none, mount_volume: {}}
      capacity_range: {required_bytes: 1G}
  scratch: {}
`
	if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}
	w.want(0, "skipped  scratch (no x-cluster-spec, or external: not a volume to create)\ncreated  st_data\n",
		"stack", "volumes", "-c", file, "--namespace", "st")
	if v := w.engine.vols["st_data"]; v == nil || v.ClusterVolume.Spec.CapacityRange.RequiredBytes != 1<<30 {
		t.Fatalf("st_data: %+v", v)
	}
	w.want(0, "exists   st_data\n", "stack", "volumes", "--compose-file", file, "--namespace", "st")
	if err := os.WriteFile(file, []byte(strings.Replace(compose, "1G", "2G", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	w.want(1, "swarm-csi stack volumes: ", "stack", "volumes", "-c", file, "--namespace", "st")
	w.want(1, "swarm-csi stack volumes: ", "stack", "volumes", "-c", filepath.Join(t.TempDir(), "none.yml"), "--namespace", "st")
}
