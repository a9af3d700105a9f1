package stackvol

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/volume"
)

const composeFile = `
services:
  db:
    image: busybox
    deploy: {replicas: 3}
    volumes: [{type: cluster, source: group:db, target: /data}]
  cfg:
    image: busybox
    volumes: [{type: cluster, source: shared, target: /cfg}]
volumes:
  db-1: &db
    driver: swarm-csi:latest
    driver_opts: {fsType: ext4}
    x-cluster-spec:
      group: db
      access_mode: {scope: single, sharing: none, mount_volume: {}}
      capacity_range: {required_bytes: 1G}
  db-2: *db
  db-3: *db
  shared:
    name: app-config
    driver: swarm-csi:latest
    labels: {team: web}
    x-cluster-spec:
      access_mode: {scope: multi, sharing: readonly, mount_volume: {fs_type: xfs}}
      capacity_range: {required_bytes: 512M, limit_bytes: 1G}
      secrets: [{key: userKey, secret: ceph-key}]
      availability: pause
  old: {external: true, name: legacy}
  scratch: {}
`

func writeCompose(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "docker-compose.yml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	vols, skipped, err := Load(context.Background(), writeCompose(t, composeFile), "app")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(skipped, ",") != "old,scratch" {
		t.Errorf("skipped %v, want old and scratch", skipped)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "app-config,app_db-1,app_db-2,app_db-3" {
		t.Fatalf("volumes %v", names)
	}
	db := vols[1]
	if db.Driver != "swarm-csi:latest" || db.DriverOpts["fsType"] != "ext4" || db.Spec.Group != "db" ||
		db.Spec.CapacityRange.RequiredBytes != 1<<30 || db.Spec.AccessMode.MountVolume == nil ||
		db.Spec.AccessMode.Scope != volume.ScopeSingleNode || db.Spec.Availability != volume.AvailabilityActive ||
		db.Labels[NamespaceLabel] != "app" {
		t.Errorf("db-1: %+v, spec %+v", db, db.Spec)
	}
	cfg := vols[0]
	if cfg.Spec.AccessMode.Sharing != volume.SharingReadOnly || cfg.Spec.AccessMode.MountVolume.FsType != "xfs" ||
		cfg.Spec.CapacityRange.LimitBytes != 1<<30 || cfg.Spec.CapacityRange.RequiredBytes != 512<<20 ||
		len(cfg.Spec.Secrets) != 1 || cfg.Spec.Secrets[0].Secret != "ceph-key" ||
		cfg.Spec.Availability != volume.AvailabilityPause || cfg.Labels["team"] != "web" {
		t.Errorf("shared: %+v, spec %+v", cfg, cfg.Spec)
	}
}

func TestLoadInvalid(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{`{access_mode: {scope: everywhere}}`, "access_mode.scope"},
		{`{access_mode: {sharing: some}}`, "access_mode.sharing"},
		{`{capacity_range: {required_bytes: 2G, limit_bytes: 1G}}`, "capacity_range"},
		{`{capacity_range: {required_bytes: lots}}`, "size"},
		{`{availability: gone}`, "availability"},
		{`{grup: db}`, "unknown field"},
		{`{access_mode: {mount_volume: {}, block_volume: {}}}`, "both"},
	} {
		f := writeCompose(t, "services: {}\nvolumes:\n  v:\n    driver: swarm-csi:latest\n    x-cluster-spec: "+tc.spec+"\n")
		_, _, err := Load(context.Background(), f, "app")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("x-cluster-spec %s: %v, want an error about %q", tc.spec, err, tc.want)
		}
	}
	f := writeCompose(t, "services: {}\nvolumes:\n  v:\n    x-cluster-spec: {}\n")
	if _, _, err := Load(context.Background(), f, "app"); err == nil || !strings.Contains(err.Error(), "driver") {
		t.Errorf("no driver: %v", err)
	}
	if _, _, err := Load(context.Background(), f, ""); err == nil {
		t.Error("no namespace: no error")
	}
}

// fakeEngine keeps volumes as the Engine would report them.
type fakeEngine struct {
	vols    map[string]*volume.Volume
	created []string
}

func (f *fakeEngine) Inspect(_ context.Context, name string) (*volume.Volume, error) {
	return f.vols[name], nil
}

func (f *fakeEngine) Create(_ context.Context, v Volume) error {
	spec := v.Spec
	f.vols[v.Name] = &volume.Volume{Name: v.Name, Driver: v.Driver, Options: v.DriverOpts, Labels: v.Labels,
		ClusterVolume: &volume.ClusterVolume{Spec: spec}}
	f.created = append(f.created, v.Name)
	return nil
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	vols, _, err := Load(ctx, writeCompose(t, composeFile), "app")
	if err != nil {
		t.Fatal(err)
	}
	e := &fakeEngine{vols: map[string]*volume.Volume{}}
	res, err := Apply(ctx, e, vols)
	if err != nil || len(e.created) != 4 {
		t.Fatalf("first run: %v, created %v", err, e.created)
	}
	for _, r := range res {
		if r.Action != "created" {
			t.Errorf("first run: %+v", r)
		}
	}
	// Again: nothing to do, even after an operator drained a volume.
	e.vols["app_db-2"].ClusterVolume.Spec.Availability = volume.AvailabilityDrain
	e.created = nil
	res, err = Apply(ctx, e, vols)
	if err != nil || len(e.created) != 0 || len(res) != 4 || res[0].Action != "exists" {
		t.Fatalf("second run: %v, %+v, created %v", err, res, e.created)
	}

	// One volume with another spec: an error naming it, and nothing made.
	delete(e.vols, "app_db-3")
	e.vols["app_db-1"].ClusterVolume.Spec.Group = "other"
	e.vols["app-config"].ClusterVolume.Spec.CapacityRange = &volume.CapacityRange{RequiredBytes: 1 << 30}
	_, err = Apply(ctx, e, vols)
	if err == nil || !strings.Contains(err.Error(), `app_db-1 (db-1) exists with group "other", not "db"`) ||
		!strings.Contains(err.Error(), "app-config (shared) exists with capacity range") || len(e.created) != 0 {
		t.Fatalf("conflict: %v, created %v", err, e.created)
	}
	e.vols["app_db-1"].Driver = "local"
	e.vols["app_db-1"].ClusterVolume = nil
	if _, err := Apply(ctx, e, vols[1:2]); err == nil || !strings.Contains(err.Error(), "driver local") ||
		!strings.Contains(err.Error(), "local volume") {
		t.Fatalf("a local volume of that name: %v", err)
	}
}
