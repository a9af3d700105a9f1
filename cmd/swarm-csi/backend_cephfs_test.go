package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/cephfs"
)

func openCephFS(t *testing.T, args []string, env map[string]string) (*openedBackend, error) {
	t.Helper()
	all := append([]string{"--backend=cephfs", "--node-id=n1", "--data-dir=" + filepath.Join(t.TempDir(), "data")}, args...)
	c, err := parseConfig(all, envOf(env), io.Discard)
	if err != nil {
		return nil, err
	}
	return c.open(context.Background(), c)
}

// Valid settings open the backend in the Ceph build; the plain build
// answers that it has no Ceph, naming the flavour to install.
func TestCephFSBackendOpens(t *testing.T) {
	be, err := openCephFS(t, []string{"--cephfs-monitors=10.0.0.1,10.0.0.2:6789", "--cephfs-client=fuse", "--cephfs-default-quota=256MiB"},
		map[string]string{"CEPHFS_KEY": rbdTestKey, "CEPHFS_FS": "shared", "CEPHFS_USER": "swarm-csi"})
	if !cephfs.CephSupport {
		if !errors.Is(err, cephfs.ErrNoCeph) || !strings.Contains(err.Error(), "--with rbd") {
			t.Fatalf("plain build: %v, want ErrNoCeph", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	info := be.controller.Info()
	if info.Name != "cephfs" || !info.SharedFilesystem || !info.Quota || info.DefaultSize != 256*backend.MiB || be.node == nil {
		t.Fatalf("opened %+v", info)
	}
	if os.Getenv("CEPHFS_KEY") != "" {
		t.Error("CEPHFS_KEY left in the environment")
	}
}

func TestCephFSSettingsInvalid(t *testing.T) {
	base := map[string]string{"CEPHFS_MONITORS": "10.0.0.1", "CEPHFS_KEY": rbdTestKey}
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		naming string
	}{
		{"no monitors", nil, map[string]string{"CEPHFS_KEY": rbdTestKey}, "CEPHFS_MONITORS"},
		{"bad user", []string{"--cephfs-user=client.admin"}, base, "--cephfs-user"},
		{"no key", nil, map[string]string{"CEPHFS_MONITORS": "10.0.0.1"}, "CEPHFS_KEY"},
		{"two keys", []string{"--cephfs-keyring=/k"}, base, "give exactly one"},
		{"bad fs", nil, with(base, "CEPHFS_FS", "a b"), "CEPHFS_FS"},
		{"bad group", []string{"--cephfs-group=a/b"}, base, "--cephfs-group"},
		{"bad client", nil, with(base, "CEPHFS_CLIENT", "nfs"), "CEPHFS_CLIENT"},
		{"bad quota", nil, with(base, "CEPHFS_DEFAULT_QUOTA", "lots"), "CEPHFS_DEFAULT_QUOTA"},
		{"odd quota", nil, with(base, "CEPHFS_DEFAULT_QUOTA", "1000"), "CEPHFS_DEFAULT_QUOTA"},
		{"bad timeout", nil, with(base, "CEPHFS_TIMEOUT", "1s"), "CEPHFS_TIMEOUT"},
		{"bad clone wait", nil, with(base, "CEPHFS_CLONE_WAIT", "soon"), "CEPHFS_CLONE_WAIT"},
		{"short clone wait", []string{"--cephfs-clone-wait=10ms"}, base, "--cephfs-clone-wait"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openCephFS(t, tt.args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.naming) {
				t.Fatalf("error %v, want one naming %s", err, tt.naming)
			}
		})
	}
}
