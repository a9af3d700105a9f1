package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func openDir(t *testing.T, args []string, env map[string]string) (*openedBackend, error) {
	t.Helper()
	all := append([]string{"--backend=dir", "--node-id=n1", "--data-dir=" + filepath.Join(t.TempDir(), "data")}, args...)
	c, err := parseConfig(all, envOf(env), io.Discard)
	if err != nil {
		return nil, err
	}
	return c.open(context.Background(), c)
}

func TestDirBackendOpens(t *testing.T) {
	be, err := openDir(t, []string{"--dir-on-delete=delete"}, map[string]string{"DIR_ALLOW_LOCAL": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if info := be.controller.Info(); info.Name != "dir" || !info.SharedFilesystem || be.node == nil || len(be.topology) != 1 {
		t.Fatalf("opened %+v", be)
	}
	if !strings.HasSuffix(be.stateDir, "/data/dir/node-state") {
		t.Errorf("node state in %q, want apart from a loop plugin's, under dir/", be.stateDir)
	}
}

func TestDirSettingsInvalid(t *testing.T) {
	for _, c := range []struct {
		args   []string
		env    map[string]string
		naming string
	}{
		{[]string{"--dir-on-delete=shred"}, nil, "--dir-on-delete (DIR_ON_DELETE)"},
		{nil, map[string]string{"DIR_ON_DELETE": "Retain"}, "DIR_ON_DELETE"},
		{nil, map[string]string{"DIR_ALLOW_LOCAL": "sometimes"}, "--dir-allow-local (DIR_ALLOW_LOCAL)"},
	} {
		_, err := openDir(t, c.args, c.env)
		if err == nil || !strings.Contains(err.Error(), c.naming) {
			t.Errorf("%v %v: %v, want an error naming %s", c.args, c.env, err, c.naming)
		}
	}
}
