// Package harness brings up real Docker Swarms on this machine for the
// end-to-end suite, as docs/swarm.md ("Running a real Swarm locally") and
// e2e/README.md describe: an Engine built from the module proxy, runc
// built with seccomp, Debian's containerd, the managed plugin from
// deploy/build-plugin and a busybox image imported from busybox-static.
//
// Everything it starts it records first (see record.go), and a reaper
// process cleans up after a test binary that died (a panic, a -timeout, a
// kill), so no daemon, mount, loop device or network namespace outlives a
// run.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Versions of what the harness builds, and the names it uses.
const (
	DockerdModule  = "github.com/moby/moby/v2/cmd/dockerd"
	DockerdVersion = "v2.0.0-beta.24"
	RuncModule     = "github.com/opencontainers/runc"
	RuncVersion    = "v1.3.3"

	// PluginName is the managed plugin's name. Swarm matches it with the
	// tag (SwarmKit #3215), so volumes are created with --driver PluginName.
	PluginName = "swarm-csi:latest"
	// BusyboxImage is imported on every node from busybox-static; services
	// use it with --no-resolve-image since there is no registry.
	BusyboxImage = "e2e-busybox:latest"
	// DockerCLI is the client this machine image ships (28.2.2).
	DockerCLI = "/usr/local/bin/docker"
)

// CacheDir holds the version-keyed builds (dockerd, runc, the plugin).
func CacheDir() string {
	if d := os.Getenv("SWARM_CSI_E2E_CACHE"); d != "" {
		return d
	}
	return "/var/cache/swarm-csi-e2e"
}

// Logf is where the harness reports progress (t.Logf, log.Printf).
type Logf func(format string, args ...any)

// RepoRoot is the module's root directory (where go.mod is).
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		// file is <root>/e2e/internal/harness/harness.go.
		root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root, nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find the module root: not inside the swarm-csi module")
	}
	return filepath.Dir(gomod), nil
}

// CmdError is a failed command with what it printed.
type CmdError struct {
	Cmd    string
	Err    error
	Output string
}

func (e *CmdError) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > 4000 {
		out = "..." + out[len(out)-4000:]
	}
	return fmt.Sprintf("%s: %v\n%s", e.Cmd, e.Err, out)
}

func (e *CmdError) Unwrap() error { return e.Err }

// runCmd runs a command and returns its combined output.
func runCmd(ctx context.Context, env []string, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return out.String(), &CmdError{Cmd: name + " " + strings.Join(args, " "), Err: err, Output: out.String()}
	}
	return out.String(), nil
}

// baseEnv is os.Environ with the given variables replaced.
func baseEnv(set ...string) []string {
	keys := map[string]bool{}
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !keys[k] {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// SkipReason says why this machine cannot run the suite, or "".
func SkipReason() string {
	if os.Geteuid() != 0 {
		return "the Swarm e2e suite needs root (dockerd, loop devices, mounts, network namespaces)"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "the Swarm e2e suite needs loop devices: /dev/loop-control is missing (modprobe loop)"
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "the Swarm e2e suite builds dockerd and runc with the go command, which is not in PATH"
	}
	if _, err := os.Stat(DockerCLI); err != nil {
		return "the Swarm e2e suite drives Docker with the docker CLI at " + DockerCLI + ", which is missing"
	}
	return ""
}
