package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd"
)

const rbdTestKey = "AQBVdkJpAAAAABAAtfQEGcq5JXH5xZ4Pu5ABCQ=="

// rbdConfig parses the flags and env of an rbd driver and opens it.
func openRBD(t *testing.T, args []string, env map[string]string) (*openedBackend, error) {
	t.Helper()
	all := append([]string{"--backend=rbd", "--node-id=n1", "--data-dir=" + filepath.Join(t.TempDir(), "data")}, args...)
	c, err := parseConfig(all, envOf(env), io.Discard)
	if err != nil {
		return nil, err
	}
	return c.open(context.Background(), c)
}

// openedOrNoCeph fails t unless err says what the build answers for good
// settings: nothing with Ceph, the refusal without.
func openedOrNoCeph(t *testing.T, err error) bool {
	t.Helper()
	if !rbd.CephSupport {
		if err == nil || !strings.Contains(err.Error(), "without Ceph support") {
			t.Fatalf("a build without Ceph opened the rbd backend: %v", err)
		}
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func TestRBDBackendOpens(t *testing.T) {
	be, err := openRBD(t, []string{"--rbd-monitors=10.0.0.1,10.0.0.2:6789", "--rbd-attach=fuse"},
		map[string]string{"RBD_KEY": rbdTestKey, "RBD_POOL": "volumes", "RBD_USER": "swarm-csi"})
	if !openedOrNoCeph(t, err) {
		return
	}
	info := be.controller.Info()
	if info.Name != "rbd" || be.node == nil || len(be.topology) != 1 {
		t.Fatalf("opened %+v", be)
	}
}

func TestRBDSettingsInvalid(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(rbdTestKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"RBD_MONITORS": "10.0.0.1", "RBD_KEY": rbdTestKey}
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		naming string // what the error must name
	}{
		{"no monitors", nil, map[string]string{"RBD_KEY": rbdTestKey}, "RBD_MONITORS"},
		{"bad pool", []string{"--rbd-pool=a/b"}, base, "--rbd-pool"},
		{"bad data pool", nil, with(base, "RBD_DATA_POOL", "x y"), "RBD_DATA_POOL"},
		{"bad user", []string{"--rbd-user=client.admin"}, base, "--rbd-user"},
		{"bad features", nil, with(base, "RBD_IMAGE_FEATURES", "layering;x"), "RBD_IMAGE_FEATURES"},
		{"bad prefix", []string{"--rbd-prefix=Caps"}, base, "--rbd-prefix"},
		{"bad attach", nil, with(base, "RBD_ATTACH", "iscsi"), "RBD_ATTACH"},
		{"bad timeout", []string{"--rbd-timeout=1s"}, base, "--rbd-timeout"},
		{"no key", nil, map[string]string{"RBD_MONITORS": "10.0.0.1"}, "RBD_KEY_FILE"},
		{"two keys", []string{"--rbd-key-file=" + keyFile}, base, "RBD_KEYRING"},
		{"not a key", nil, with(base, "RBD_KEY", "secret"), "RBD_KEY"},
		{"empty key file", []string{"--rbd-key-file=" + empty}, map[string]string{"RBD_MONITORS": "10.0.0.1"}, "--rbd-key-file"},
		{"missing keyring", []string{"--rbd-keyring=" + filepath.Join(dir, "nope")}, map[string]string{"RBD_MONITORS": "10.0.0.1"}, "--rbd-keyring"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openRBD(t, tt.args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.naming) {
				t.Fatalf("error %v does not name %s", err, tt.naming)
			}
			if strings.Contains(err.Error(), "secret") && tt.name == "not a key" {
				t.Fatalf("error repeats the bad key: %v", err)
			}
		})
	}
	// A key file is read and trimmed.
	_, err := openRBD(t, []string{"--rbd-key-file=" + keyFile}, map[string]string{"RBD_MONITORS": "10.0.0.1"})
	openedOrNoCeph(t, err)
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for kk, vv := range m {
		if kk != k {
			out[kk] = vv
		}
	}
	return out
}
