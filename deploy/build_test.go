// Package deploy holds the Docker managed plugin's packaging: build-plugin,
// config.json and a Dockerfile. This test builds the plugin directory and
// checks it without a Docker daemon.
package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
)

// pluginConfig mirrors the fields of Docker's plugin config
// (github.com/moby/moby/api/types/plugin.Config) that config.json sets,
// with the same JSON names.
type pluginConfig struct {
	Description   string
	Documentation string
	Entrypoint    []string
	WorkDir       string
	Args          struct {
		Name, Description string
		Settable, Value   []string
	}
	Interface struct {
		Types  []string
		Socket string
	}
	Network struct {
		Type string
	}
	IpcHost         bool
	PidHost         bool
	PropagatedMount string
	Linux           struct {
		Capabilities    []string
		AllowAllDevices bool
		Devices         []json.RawMessage
	}
	Mounts []struct {
		Name, Description, Type string
		Source                  *string
		Destination             string
		Options, Settable       []string
	}
	Env []struct {
		Name, Description string
		Value             *string
		Settable          []string
	}
}

// The commands the driver executes (pkg/node/mounter.go and
// k8s.io/mount-utils), fsck's helpers for ext4 and xfs, and what these are
// links or scripts to: exactly the programs the rootfs's PATH may hold.
var (
	driverCommands = []string{"blkid", "fsck", "fsck.ext4", "fsck.xfs", "mkfs.ext4", "mkfs.xfs", "e2fsck", "resize2fs", "xfs_growfs"}
	pathPrograms   = append([]string{"mke2fs", "sh", "dash"}, driverCommands...)
)

const (
	testVersion = "v0.0.0-test"
	testEpoch   = "1700000000"
	maxRootfs   = 40 << 20
	// The rbd flavour is about 66.5 MiB: the driver (17 MiB, without the
	// operator's commands) and the libraries it links (38 MiB:
	// libceph-common 10.5, librbd 9, libcrypto 4.5, libcephfs 2, ...), the
	// attach tools (rbd 4 MiB), ceph-fuse (2.5 MiB) and the plain plugin's
	// tools.
	maxRootfsRBD = 68 << 20
)

// needRoot skips without root or a tool build-plugin needs, except in CI
// (CI=true), where the test must run.
func needRoot(t *testing.T) {
	t.Helper()
	why := testenv.MissingTools("bash", "apt-get", "apt-cache", "dpkg-deb", "readelf", "chroot", "unshare", "tar")
	if os.Geteuid() != 0 {
		why = "needs root (chroot, unshare, and the plugin's root-owned tree)"
	}
	testenv.Require(t, why)
}

func TestBuildPlugin(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	// A snapshot of the source, so that edits made while the test runs
	// cannot make the two builds differ.
	src := filepath.Join(tmp, "src")
	copyTree(t, "..", src)
	script := filepath.Join(src, "deploy", "build-plugin")

	a, b, c := filepath.Join(tmp, "a"), filepath.Join(tmp, "b"), filepath.Join(tmp, "c")
	aTar, bTar := filepath.Join(tmp, "a.tar"), filepath.Join(tmp, "b.tar")
	build(t, script, a, nil, "--tar", aTar)
	build(t, script, b, nil, "--tar", bTar)
	build(t, script, c, []string{"CAPS=CAP_SYS_ADMIN"})
	r := filepath.Join(tmp, "r")
	build(t, script, r, []string{"CAPS=CAP_SYS_ADMIN"}, "--with", "rbd")

	t.Run("reproducible", func(t *testing.T) {
		la, lb := treeLines(t, a), treeLines(t, b)
		if ha, hb := hashLines(la), hashLines(lb); ha != hb {
			t.Errorf("two builds differ: %s vs %s\n%s", ha, hb, firstDiff(la, lb))
		}
		ta, err := os.ReadFile(aTar)
		if err != nil {
			t.Fatal(err)
		}
		tb, err := os.ReadFile(bTar)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ta, tb) {
			t.Errorf("the two tars differ")
		}
		if lt := tarLines(t, aTar); !slices.Equal(lt, la) {
			t.Errorf("the tar does not hold the tree:\n%s", firstDiff(lt, la))
		}
		// CAPS changes config.json's capabilities and nothing else.
		lc := treeLines(t, filepath.Join(c, "rootfs"))
		if la, lc := hashLines(treeLines(t, filepath.Join(a, "rootfs"))), hashLines(lc); la != lc {
			t.Errorf("CAPS changed the rootfs")
		}
		ca, cc := readConfig(t, a), readConfig(t, c)
		if !slices.Equal(cc.Linux.Capabilities, []string{"CAP_SYS_ADMIN"}) {
			t.Errorf("CAPS=CAP_SYS_ADMIN: capabilities %v", cc.Linux.Capabilities)
		}
		cc.Linux.Capabilities = ca.Linux.Capabilities
		if !reflect.DeepEqual(ca, cc) {
			t.Errorf("CAPS changed more of config.json than the capabilities")
		}
	})

	t.Run("config", func(t *testing.T) { checkConfig(t, a) })
	t.Run("programs", func(t *testing.T) { checkPrograms(t, filepath.Join(a, "rootfs"), readConfig(t, a)) })
	t.Run("size", func(t *testing.T) { checkSize(t, filepath.Join(a, "rootfs"), maxRootfs) })
	t.Run("licences", func(t *testing.T) {
		checkLicences(t, filepath.Join(a, "rootfs"))
		checkLicences(t, filepath.Join(r, "rootfs"))
	})
	t.Run("no build paths", func(t *testing.T) {
		checkNoBuildPaths(t, filepath.Join(a, "rootfs"), src, tmp)
		checkNoBuildPaths(t, filepath.Join(r, "rootfs"), src, tmp)
	})
	t.Run("rbd flavour", func(t *testing.T) { checkRBDFlavour(t, c, r) })
	// Last: it writes images into c's /tmp.
	t.Run("tools work", func(t *testing.T) { checkToolsWork(t, filepath.Join(c, "rootfs"), readConfig(t, c)) })
}

// build runs build-plugin into out, with env added to the test's.
func build(t *testing.T, script, out string, env []string, args ...string) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(script, append(args, out)...)
	cmd.Env = append(os.Environ(), "VERSION="+testVersion, "SOURCE_DATE_EPOCH="+testEpoch, "GOTOOLCHAIN=local")
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-plugin %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr.Bytes())
	}
	t.Logf("build-plugin %s (%s, %v):\n%s", strings.Join(args, " "), strings.Join(env, " "),
		time.Since(start).Round(100*time.Millisecond), stdout)
}

func readConfig(t *testing.T, out string) *pluginConfig {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(out, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c pluginConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("config.json: %v", err)
	}
	return &c
}

func checkConfig(t *testing.T, out string) {
	raw, err := os.ReadFile(filepath.Join(out, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c := readConfig(t, out)

	// Every key is one of Docker's, spelt as Docker spells it: Go's JSON
	// decoding ignores unknown keys and case, so compare the file with the
	// struct written back.
	var fromFile, fromStruct any
	if err := json.Unmarshal(raw, &fromFile); err != nil {
		t.Fatal(err)
	}
	back, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(back, &fromStruct); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, fromStruct) {
		t.Errorf("config.json has keys Docker's plugin config does not:\nfile:    %v\nwritten: %v", fromFile, fromStruct)
	}

	if c.Description == "" || c.Documentation == "" {
		t.Errorf("description %q, documentation %q: want both", c.Description, c.Documentation)
	}
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %#v, want %#v", what, got, want)
		}
	}
	check("Entrypoint", c.Entrypoint, []string{"/swarm-csi"})
	check("Interface.Types", c.Interface.Types, []string{"docker.csicontroller/1.0", "docker.csinode/1.0"})
	check("Interface.Socket", c.Interface.Socket, "csi.sock")
	check("Network.Type", c.Network.Type, "host")
	check("PropagatedMount", c.PropagatedMount, "/data/published")
	check("Linux.Capabilities", c.Linux.Capabilities, []string{"CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"})
	check("Linux.AllowAllDevices", c.Linux.AllowAllDevices, true)

	if len(c.Mounts) != 2 {
		t.Fatalf("mounts: %d, want dev and data", len(c.Mounts))
	}
	for _, m := range c.Mounts {
		src := "<nil>"
		if m.Source != nil {
			src = *m.Source
		}
		switch m.Name {
		case "dev":
			check("dev mount", []any{m.Type, src, m.Destination, m.Options, len(m.Settable)},
				[]any{"bind", "/dev", "/dev", []string{"rbind", "rshared"}, 0})
		case "data":
			check("data mount", []any{m.Type, src, m.Destination, m.Options, m.Settable},
				[]any{"bind", "/var/lib/swarm-csi", "/var/lib/swarm-csi", []string{"rbind"}, []string{"source"}})
		default:
			t.Errorf("unexpected mount %q", m.Name)
		}
	}

	// The backends' settings default to empty: the driver's own defaults
	// apply (cmd/swarm-csi checks that config.json names exactly the
	// variables the driver reads).
	want := map[string]string{
		"CSI_ENDPOINT":         "unix:///run/docker/plugins/csi.sock",
		"DATA_DIR":             "/var/lib/swarm-csi",
		"BACKEND":              "loop",
		"NODE_ID":              "",
		"DRIVER_NAME":          "swarm-csi",
		"LOG_LEVEL":            "info",
		"MAX_VOLUMES_PER_NODE": "128",
		"GROW_INTERVAL":        "30s",
		"METRICS_ADDR":         "",
		"DIR_ON_DELETE":        "retain",
		"DIR_ALLOW_LOCAL":      "false",
		"PATH":                 "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
	got := map[string]string{}
	for _, e := range c.Env {
		if e.Value == nil {
			t.Errorf("env %s has no value: Docker would not pass it", e.Name)
			continue
		}
		check("env "+e.Name+" settable", e.Settable, []string{"value"})
		if strings.HasPrefix(e.Name, "RBD_") || strings.HasPrefix(e.Name, "CEPHFS_") || strings.HasPrefix(e.Name, "HCLOUD_") {
			check("env "+e.Name, *e.Value, "")
			continue
		}
		got[e.Name] = *e.Value
	}
	check("env", got, want)
	// The socket Docker connects to is <plugin-id>/<Socket> under its
	// plugin runtime directory, which it mounts at /run/docker/plugins.
	check("CSI_ENDPOINT against Socket", got["CSI_ENDPOINT"], "unix:///run/docker/plugins/"+c.Interface.Socket)

	// The mount points exist in the rootfs.
	root := filepath.Join(out, "rootfs")
	for _, d := range []string{"/run/docker/plugins", "/data/staged", c.PropagatedMount, got["DATA_DIR"], "/dev", "/proc", "/sys", "/tmp", "/etc"} {
		if fi, err := os.Lstat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("rootfs%s: want a directory (%v)", d, err)
		}
	}
}

// lookPath finds name in the rootfs along the plugin's PATH, as exec in the
// plugin would; it returns the path inside the rootfs.
func lookPath(root, pathEnv, name string) string {
	for _, dir := range filepath.SplitList(pathEnv) {
		p := path.Join(dir, name)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func envOf(c *pluginConfig, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.Value != nil {
			return *e.Value
		}
	}
	return ""
}

// chroot runs a program inside the rootfs with the plugin's PATH.
func chroot(root string, c *pluginConfig, args ...string) (string, int, error) {
	cmd := exec.Command("chroot", append([]string{root}, args...)...)
	cmd.Env = []string{"PATH=" + envOf(c, "PATH"), "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code, err = ee.ExitCode(), nil
	}
	return string(out), code, err
}

func checkPrograms(t *testing.T, root string, c *pluginConfig) {
	pathEnv := envOf(c, "PATH")

	// Exactly the programs the driver needs are on PATH.
	var onPath []string
	for _, dir := range filepath.SplitList(pathEnv) {
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			continue
		}
		for _, e := range entries {
			onPath = append(onPath, e.Name())
		}
	}
	sort.Strings(onPath)
	want := slices.Clone(pathPrograms)
	sort.Strings(want)
	if !slices.Equal(onPath, want) {
		t.Errorf("programs on the plugin's PATH: %v, want %v", onPath, want)
	}

	// Each one starts: its libraries and the loader are all there. resize2fs
	// has no version option; without arguments it prints its usage.
	runs := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"blkid", "-V"}, 0, "blkid from util-linux"},
		{[]string{"fsck", "--version"}, 0, "fsck from util-linux"},
		{[]string{"fsck.ext4", "-V"}, 0, "e2fsck 1."},
		{[]string{"e2fsck", "-V"}, 0, "e2fsck 1."},
		{[]string{"mkfs.ext4", "-V"}, 0, "mke2fs 1."},
		{[]string{"resize2fs"}, 1, "Usage:"},
		{[]string{"mkfs.xfs", "-V"}, 0, "mkfs.xfs version"},
		{[]string{"xfs_growfs", "-V"}, 0, "xfs_growfs version"},
		{[]string{"fsck.xfs", "-a", "/"}, 0, "XFS file system."}, // a /bin/sh script
		{[]string{"sh", "-c", "echo sh works"}, 0, "sh works"},
	}
	for _, r := range runs {
		p := lookPath(root, pathEnv, r.args[0])
		if p == "" {
			t.Errorf("%s: not on the plugin's PATH %s", r.args[0], pathEnv)
			continue
		}
		out, code, err := chroot(root, c, append([]string{p}, r.args[1:]...)...)
		if err != nil || code != r.wantCode || !strings.Contains(out, r.want) || strings.Contains(out, "error while loading shared libraries") {
			t.Errorf("chroot rootfs %s %s: exit %d (%v), want %d and %q:\n%s", p, strings.Join(r.args[1:], " "), code, err, r.wantCode, r.want, out)
		}
	}
	for _, name := range driverCommands {
		if lookPath(root, pathEnv, name) == "" {
			t.Errorf("%s: not on the plugin's PATH", name)
		}
	}

	out, code, err := chroot(root, c, c.Entrypoint[0], "--version")
	if err != nil || code != 0 || strings.TrimSpace(out) != "swarm-csi "+testVersion {
		t.Errorf("chroot rootfs /swarm-csi --version: exit %d (%v): %q, want %q", code, err, out, "swarm-csi "+testVersion)
	}
}

// checkToolsWork runs what the driver runs, on image files, inside the
// rootfs with /proc and /dev mounted as in the plugin (a private mount
// namespace, so nothing outlives the command).
func checkToolsWork(t *testing.T, root string, c *pluginConfig) {
	run := func(wantCode int, want string, args ...string) {
		t.Helper()
		runInRootfs(t, root, c, wantCode, want, args...)
	}
	image := func(name string, size int64) string {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(root, "tmp", name), os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			err = f.Truncate(size)
			f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		return "/tmp/" + name
	}

	// ext4: format, detect, check, grow unmounted (as pkg/node does at stage).
	e := image("ext4.img", 32<<20)
	run(0, "", "mkfs.ext4", "-F", "-m0", e)
	run(0, "TYPE=ext4", "blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", e)
	run(0, "clean", "fsck", "-a", e)
	image("ext4.img", 48<<20)
	run(0, "", "e2fsck", "-f", "-p", e)
	run(0, "is now", "resize2fs", e)

	// xfs: format (300 MiB at least), detect, check (fsck runs fsck.xfs).
	x := image("xfs.img", 300<<20)
	run(0, "", "mkfs.xfs", "-f", x)
	run(0, "TYPE=xfs", "blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", x)
	run(0, "XFS file system", "fsck", "-a", x)
	// blkid exits 2 for a device without a filesystem: mount-utils' "unformatted".
	run(2, "", "blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", image("empty.img", 1<<20))
}

// runInRootfs runs a command inside the rootfs with /proc and /dev mounted
// as in the plugin (a private mount namespace, so nothing outlives it), and
// fails the test unless it exits wantCode with want in its output. It
// returns the output.
func runInRootfs(t *testing.T, root string, c *pluginConfig, wantCode int, want string, args ...string) string {
	t.Helper()
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-ec",
		`r=$0; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; exec chroot "$r" "$@"`, root}, args...)...)
	cmd.Env = []string{"PATH=" + envOf(c, "PATH"), "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code, err = ee.ExitCode(), nil
	}
	if err != nil || code != wantCode || !strings.Contains(string(out), want) {
		t.Fatalf("in the rootfs, %s: exit %d (%v), want %d and %q:\n%s", strings.Join(args, " "), code, err, wantCode, want, out)
	}
	return string(out)
}

// checkLicences: every Debian package the rootfs takes files from has its
// copyright file there, /usr/share/doc/PKG/copyright, or copyright.gz for a
// large one (the same text, gzipped).
func checkLicences(t *testing.T, root string) {
	list, err := os.ReadFile(filepath.Join(root, "usr/share/doc/swarm-csi-plugin/debian-packages"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		pkg := strings.Fields(line)[0]
		dir := filepath.Join(root, "usr/share/doc", pkg)
		text, err := os.ReadFile(filepath.Join(dir, "copyright"))
		if errors.Is(err, fs.ErrNotExist) {
			text, err = gunzipFile(filepath.Join(dir, "copyright.gz"))
		}
		if err != nil || !bytes.Contains(bytes.ToLower(text), []byte("copyright")) {
			t.Errorf("%s: no licence in /usr/share/doc/%s (%v)", pkg, pkg, err)
		}
	}
}

func gunzipFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
}

func checkSize(t *testing.T, root string, max int64) {
	type file struct {
		path string
		size int64
	}
	var files []file
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files = append(files, file{strings.TrimPrefix(p, root), fi.Size()})
		total += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].size > files[j].size })
	var top []string
	for _, f := range files[:min(4, len(files))] {
		top = append(top, fmt.Sprintf("%s %.2f MiB", f.path, float64(f.size)/(1<<20)))
	}
	t.Logf("rootfs: %.2f MiB in %d files; largest: %s", float64(total)/(1<<20), len(files), strings.Join(top, ", "))
	if total > max {
		t.Errorf("rootfs is %.2f MiB, want under %d MiB", float64(total)/(1<<20), max>>20)
	}
}

// checkNoBuildPaths: no file in the rootfs names the source or output
// directories of the build.
func checkNoBuildPaths(t *testing.T, root string, paths ...string) {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range paths {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains the build path %s", strings.TrimPrefix(p, root), s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// treeLines describes every entry under dir (not dir itself): path, type
// and mode, owner, mtime, and a symlink's target or a file's SHA-256.
func treeLines(t *testing.T, dir string) []string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		st := fi.Sys().(*syscall.Stat_t)
		what := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			what, err = os.Readlink(p)
		case fi.Mode().IsRegular():
			what, err = fileHash(p)
		}
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %v %d:%d %d %s", filepath.ToSlash(rel), fi.Mode(), st.Uid, st.Gid, fi.ModTime().Unix(), what))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// tarLines describes a tar's entries as treeLines describes a tree.
func tarLines(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		what := ""
		switch h.Typeflag {
		case tar.TypeSymlink:
			what = h.Linkname
		case tar.TypeReg:
			s := sha256.New()
			if _, err := io.Copy(s, tr); err != nil {
				t.Fatal(err)
			}
			what = hex.EncodeToString(s.Sum(nil))
		}
		lines = append(lines, fmt.Sprintf("%s %v %d:%d %d %s", strings.TrimSuffix(h.Name, "/"), h.FileInfo().Mode(), h.Uid, h.Gid, h.ModTime.Unix(), what))
	}
	return lines
}

func fileHash(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashLines(lines []string) string {
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:])
}

func firstDiff(a, b []string) string {
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return fmt.Sprintf("first difference, entry %d:\n  %s\n  %s", i, x, y)
		}
	}
	return "no difference"
}

// copyTree copies the source tree at from to to, without .git and without
// files too big to be source (binaries other work may leave in the tree).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir() && d.Name() == ".git":
			return filepath.SkipDir
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil || fi.Size() > 16<<20 {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
