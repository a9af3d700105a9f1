package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
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
	bin := buildStatic(t, dir, "")

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

// buildStatic builds the driver into dir without cgo and with the build
// tags tags only, and returns its path.
func buildStatic(t *testing.T, dir, tags string) string {
	t.Helper()
	bin := filepath.Join(dir, "swarm-csi")
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	build := exec.Command(goCmd, "build", "-tags="+tags, "-o", bin, ".")
	// GOFLAGS could carry -tags of the test run: these builds have their own.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build -tags=%s: %v\n%s", tags, err, out)
	}
	return bin
}

// TestNoCLIBuild builds the driver with the tag nocli, as the rbd plugin's
// is built: it holds neither the operator's commands nor the Docker Engine
// client and compose loader they use, and asked for a command it says
// which build has them, changing nothing.
func TestNoCLIBuild(t *testing.T) {
	bin := buildStatic(t, t.TempDir(), "nocli")
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range bi.Deps {
		for _, left := range []string{"github.com/moby/moby/client", "github.com/compose-spec/compose-go", "go.opentelemetry.io/otel"} {
			if strings.HasPrefix(d.Path, left) {
				t.Errorf("the nocli build holds %s %s, a module of the operator's commands only", d.Path, d.Version)
			}
		}
	}
	for _, args := range [][]string{{"volume", "ls"}, {"doctor"}, {"stack", "volumes", "-c", "x.yml", "--namespace", "st"}} {
		cmd := exec.Command(bin, args...)
		// A Docker Engine it must not reach.
		cmd.Env = []string{"DOCKER_HOST=unix:///nonexistent.sock"}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("nocli build, %s: %v, want exit status 2:\n%s", strings.Join(args, " "), err, out)
		}
		for _, want := range []string{"not in this build", "go build ./cmd/swarm-csi", "plain plugin"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("nocli build, %s: its message does not say %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "  -endpoint string\n") || !strings.Contains(string(out), "not in this build") {
		t.Errorf("nocli build, --help: %v, want the driver's flags and where the commands are:\n%s", err, out)
	}
}
