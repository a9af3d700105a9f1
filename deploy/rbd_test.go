package deploy

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// rbdPrograms are the programs the rbd flavour adds to PATH: the tools
// that attach images, and ceph-fuse with what it runs (fusermount, and
// mount for its remounts). The driver does everything else through
// librados, librbd and libcephfs, so there is no ceph tool and no Python.
var rbdPrograms = []string{"rbd", "rbd-nbd", "rbd-fuse", "ceph-fuse", "fusermount", "mount"}

// commandModules are modules of the operator's commands only, which the
// rbd flavour's driver (built with the tag nocli) leaves out.
var commandModules = []string{"github.com/moby/moby/client", "github.com/compose-spec/compose-go/v2", "go.opentelemetry.io/otel"}

// cephLibraries are what the driver of the rbd flavour links, and the
// plain one must not.
var cephLibraries = []string{"librados.so.2", "librbd.so.1"}

// checkRBDFlavour compares the rbd flavour r with the plain build plain
// (both with CAPS=CAP_SYS_ADMIN), then runs its driver and its tools
// against a throwaway cluster.
func checkRBDFlavour(t *testing.T, plain, r string) {
	pc, rc := readConfig(t, plain), readConfig(t, r)
	root := filepath.Join(r, "rootfs")

	// config.json: the plain one plus the host's /sys, and the description.
	if len(rc.Mounts) == 0 || rc.Mounts[0].Name != "sys" || *rc.Mounts[0].Source != "/sys" ||
		rc.Mounts[0].Destination != "/sys" || !slices.Equal(rc.Mounts[0].Options, []string{"rbind"}) {
		raw, _ := json.MarshalIndent(rc.Mounts, "", "  ")
		t.Errorf("rbd flavour: want the host's /sys bind-mounted first, got mounts %s", raw)
	} else {
		rc.Mounts = rc.Mounts[1:]
	}
	if !strings.Contains(rc.Description, "rbd") {
		t.Errorf("rbd flavour: description %q does not name rbd", rc.Description)
	}
	rc.Description = pc.Description
	if !reflect.DeepEqual(pc, rc) {
		t.Errorf("rbd flavour: config.json differs from the plain one by more than /sys and the description")
	}

	// The rootfs holds the plain one, file for file, but for the driver:
	// static in the plain one, linking librados and librbd in this one.
	have := map[string]bool{}
	for _, l := range treeLines(t, root) {
		have[l] = true
	}
	for _, l := range treeLines(t, filepath.Join(plain, "rootfs")) {
		if !have[l] && !strings.HasPrefix(l, "usr/share/doc/swarm-csi-plugin/debian-packages ") &&
			!strings.HasPrefix(l, "swarm-csi ") {
			t.Errorf("rbd flavour: the plain rootfs has %s, the rbd one has not", l)
		}
	}
	if interp, libs := elfDeps(t, filepath.Join(plain, "rootfs", "swarm-csi")); interp != "" || len(libs) > 0 {
		t.Errorf("plain /swarm-csi: interpreter %q, libraries %v; want a static binary", interp, libs)
	}
	if _, libs := elfDeps(t, filepath.Join(root, "swarm-csi")); !containsAll(libs, cephLibraries) {
		t.Errorf("rbd flavour /swarm-csi links %v, want %v among them (built with -tags ceph,pacific)", libs, cephLibraries)
	}
	// Without the operator's commands and their modules; the plain one has them.
	for _, c := range []struct {
		file string
		want bool
	}{{filepath.Join(plain, "rootfs", "swarm-csi"), true}, {filepath.Join(root, "swarm-csi"), false}} {
		bi, err := buildinfo.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range commandModules {
			has := slices.ContainsFunc(bi.Deps, func(d *debug.Module) bool { return d.Path == m })
			if has != c.want {
				t.Errorf("%s: holds %s: %v, want %v", c.file, m, has, c.want)
			}
		}
	}

	// Exactly the plain programs and the attach tools are on PATH.
	pathEnv := envOf(rc, "PATH")
	var onPath []string
	for _, dir := range filepath.SplitList(pathEnv) {
		entries, _ := os.ReadDir(filepath.Join(root, dir))
		for _, e := range entries {
			onPath = append(onPath, e.Name())
		}
	}
	want := append(slices.Clone(pathPrograms), rbdPrograms...)
	sort.Strings(onPath)
	sort.Strings(want)
	if !slices.Equal(onPath, want) {
		t.Errorf("rbd flavour: programs on PATH %v, want %v", onPath, want)
	}
	// No Python anywhere (the ceph tool is gone with it).
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(strings.ToLower(d.Name()), "python") {
			t.Errorf("rbd flavour: %s: no Python belongs in the rootfs", strings.TrimPrefix(p, root))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSize(t, root, maxRootfsRBD)

	// The loader finds every library of the driver and the tools inside
	// the rootfs (ldd's answer, without running them).
	for _, p := range append([]string{"/swarm-csi"}, rbdPrograms...) {
		if !strings.HasPrefix(p, "/") {
			p = lookPath(root, pathEnv, p)
		}
		out, code, err := chroot(root, rc, loaderOf(t, filepath.Join(root, p)), "--list", p)
		if err != nil || code != 0 || strings.Contains(out, "not found") || !strings.Contains(out, "libc.so.6") {
			t.Errorf("in the rootfs, the loader's list for %s: exit %d (%v):\n%s", p, code, err, out)
		}
	}

	out, code, err := chroot(root, rc, "/swarm-csi", "--version")
	if err != nil || code != 0 || strings.TrimSpace(out) != "swarm-csi "+testVersion {
		t.Errorf("chroot rootfs /swarm-csi --version: exit %d (%v): %q, want %q", code, err, out, "swarm-csi "+testVersion)
	}
	runInRootfs(t, root, rc, 2, "not in this build", "sh", "-c", "/swarm-csi volume ls 2>&1")
	runInRootfs(t, root, rc, 0, "ceph version 16.", "rbd", "--version")
	runInRootfs(t, root, rc, 0, "ceph version 16.", "rbd-nbd", "--version")
	// No usage text: without a configuration it starts, then fails to reach
	// a monitor; its libraries are all there.
	runInRootfs(t, root, rc, 0, "failed to fetch mon config", "sh", "-c", "rbd-fuse --help 2>&1; true")

	// Against a cluster: the driver serves, and the rbd tool talks to it
	// as the user the driver runs as.
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := cephtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	}()
	for _, f := range []string{cl.Conf, cl.Keyring} {
		b, err := os.ReadFile(f)
		if err == nil {
			err = os.WriteFile(filepath.Join(root, "tmp", filepath.Base(f)), b, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	checkDriverServes(t, root, rc, []string{
		"BACKEND=rbd", "NODE_ID=deploy-test", "RBD_MONITORS=" + cl.MonHost, "RBD_POOL=" + cl.Pool,
		"RBD_USER=" + cl.User, "RBD_KEYRING=/tmp/" + filepath.Base(cl.Keyring), "RBD_ATTACH=fuse",
	})
	ceph := []string{"-c", "/tmp/" + filepath.Base(cl.Conf), "--id", cl.User, "--keyring", "/tmp/" + filepath.Base(cl.Keyring)}
	img := cl.Pool + "/deploy-test"
	runInRootfs(t, root, rc, 0, "", append([]string{"rbd"}, append(ceph, "create", "--size", "64M", img)...)...)
	runInRootfs(t, root, rc, 0, `"size":67108864`, append([]string{"rbd"}, append(ceph, "info", "--format", "json", img)...)...)
	runInRootfs(t, root, rc, 0, "", append([]string{"rbd"}, append(ceph, "rm", "--no-progress", img)...)...)
}

// checkDriverServes runs the rootfs's driver with the plugin's env and
// env added, as Docker would (a private mount namespace with /proc and
// /dev), until it serves its socket, having logged no warning; then stops
// it with SIGTERM.
func checkDriverServes(t *testing.T, root string, c *pluginConfig, env []string) {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-ec",
		`r=$0; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; exec chroot "$r" /swarm-csi`, root)
	for _, e := range c.Env {
		if *e.Value != "" {
			cmd.Env = append(cmd.Env, e.Name+"="+*e.Value)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	sock := filepath.Join(root, "run", "docker", "plugins", "csi.sock")
	deadline := time.After(time.Minute)
	for served := false; !served; {
		select {
		case err := <-exited:
			t.Fatalf("the rbd flavour's driver exited before serving (%v):\n%s", err, out.String())
		case <-deadline:
			cmd.Process.Kill()
			<-exited
			t.Fatalf("the rbd flavour's driver did not serve %s within a minute:\n%s", sock, out.String())
		case <-time.After(100 * time.Millisecond):
			_, err := os.Stat(sock)
			served = err == nil && strings.Contains(out.String(), "msg=serving")
		}
	}
	// The node registers with Ceph before serving, through librados in
	// the driver: a warning would say it could not.
	for _, bad := range []string{"level=WARN", "level=ERROR"} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("the rbd flavour's driver logged a %s:\n%s", bad, out.String())
		}
	}
	// unshare, sh and chroot exec one another: the process is the driver.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the rbd flavour's driver, stopped: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Errorf("the rbd flavour's driver did not stop within 30s of SIGTERM:\n%s", out.String())
	}
	t.Logf("the rbd flavour's driver served against the test cluster:\n%s", out.String())
}

// elfDeps returns the program interpreter and the DT_NEEDED libraries of
// an ELF file.
func elfDeps(t *testing.T, file string) (interp string, libs []string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	libs, err = f.ImportedLibraries()
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return interp, libs
}

// loaderOf is the program interpreter of a dynamic executable.
func loaderOf(t *testing.T, file string) string {
	t.Helper()
	interp, _ := elfDeps(t, file)
	if interp == "" {
		t.Fatalf("%s is not dynamically linked", file)
	}
	return interp
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// lockedBuffer is a bytes.Buffer that a process writes while the test
// reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
