package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPlainBuildRefusesRBD builds the driver as the plain plugin ships
// it (static: CGO_ENABLED=0, no build tags, so without librados and
// librbd) and asks it for the rbd backend: it must exit at once, before
// serving, naming the plugin flavour and the build that can reach Ceph.
func TestPlainBuildRefusesRBD(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "swarm-csi")
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	build := exec.Command(goCmd, "build", "-o", bin, ".")
	// GOFLAGS could carry -tags of the test run: the plain build has none.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sock := filepath.Join(dir, "csi.sock")
	cmd := exec.CommandContext(ctx, bin, "--backend=rbd", "--node-id=n1", "--endpoint=unix://"+sock,
		"--data-dir="+filepath.Join(dir, "data"), "--rbd-monitors=127.0.0.1:1", "--rbd-attach=fuse")
	cmd.Env = []string{"RBD_KEY=" + rbdTestKey, "PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("the plain driver asked for --backend rbd was still running after %v:\n%s", took.Round(time.Millisecond), &stderr)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("the plain driver asked for --backend rbd: %v, want a failing exit status:\n%s", err, &stderr)
	}
	for _, want := range []string{"built without Ceph support", "rbd flavour", "-tags ceph,pacific"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("its message does not say %q:\n%s", want, &stderr)
		}
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("it created its socket %s: it served before failing", sock)
	}
	t.Logf("exit status %d after %v: %s", exit.ExitCode(), took.Round(time.Millisecond), strings.TrimSpace(stderr.String()))
}
