package harness

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Tools are what a swarm needs, built or found once per run.
type Tools struct {
	Dockerd    string // the dockerd binary
	RuncDir    string // directory holding runc, put first in dockerd's PATH
	PluginDir  string // managed plugin directory: config.json + rootfs/
	BusyboxTar string // rootfs tarball for `docker import`
	RepoRoot   string
	// Durations of each preparation step, for the report.
	Timings []Timing
}

// Timing is how long one preparation step took.
type Timing struct {
	Step     string
	Duration time.Duration
	Cached   bool
}

// PluginConfig is the part of the plugin's config.json the harness reads.
type PluginConfig struct {
	PropagatedMount string `json:"propagatedMount"`
	Mounts          []struct {
		Name        string   `json:"name"`
		Source      *string  `json:"source"`
		Destination string   `json:"destination"`
		Settable    []string `json:"settable"`
	} `json:"mounts"`
	Env []struct {
		Name     string   `json:"name"`
		Value    string   `json:"value"`
		Settable []string `json:"settable"`
	} `json:"env"`
}

// ReadPluginConfig parses dir/config.json.
func ReadPluginConfig(dir string) (*PluginConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var c PluginConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s/config.json: %w", dir, err)
	}
	return &c, nil
}

// DataMountDestination is where the plugin sees its "data" mount.
func (c *PluginConfig) DataMountDestination() string {
	for _, m := range c.Mounts {
		if m.Name == "data" {
			return m.Destination
		}
	}
	return ""
}

// Prepare installs the system packages and builds (or finds in the cache)
// dockerd, runc and the plugin. runDir receives per-run files (the busybox
// tarball).
func Prepare(ctx context.Context, logf Logf, runDir, flavour string) (*Tools, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	t := &Tools{RepoRoot: root}
	step := func(name string, f func() (bool, error)) error {
		start := time.Now()
		cached, err := f()
		d := time.Since(start)
		t.Timings = append(t.Timings, Timing{Step: name, Duration: d, Cached: cached})
		logf("prepare: %s: %s (cached %v)", name, d.Round(time.Millisecond), cached)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	if err := step("apt packages", func() (bool, error) { return ensurePackages(ctx, logf, root) }); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return nil, err
	}
	// One builder at a time: the suite and the benchmark may start together.
	unlock, err := lockFile(ctx, filepath.Join(CacheDir(), ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := step("dockerd "+DockerdVersion, func() (c bool, err error) { t.Dockerd, c, err = buildDockerd(ctx, logf); return }); err != nil {
		return nil, err
	}
	if err := step("runc "+RuncVersion, func() (c bool, err error) { t.RuncDir, c, err = buildRunc(ctx, logf); return }); err != nil {
		return nil, err
	}
	if err := step("plugin", func() (c bool, err error) { t.PluginDir, c, err = buildPlugin(ctx, logf, root, flavour); return }); err != nil {
		return nil, err
	}
	if err := step("busybox rootfs", func() (bool, error) {
		t.BusyboxTar = filepath.Join(runDir, "busybox.tar")
		return false, writeBusyboxTar(t.BusyboxTar)
	}); err != nil {
		return nil, err
	}
	return t, nil
}

// ensurePackages runs scripts/e2e-deps, which installs what is missing and
// does nothing (no apt-get) when everything is there.
func ensurePackages(ctx context.Context, logf Logf, root string) (bool, error) {
	out, err := runCmd(ctx, baseEnv("DEBIAN_FRONTEND=noninteractive"), root, "bash", filepath.Join(root, "scripts", "e2e-deps"))
	if err != nil {
		return false, err
	}
	out = strings.TrimSpace(out)
	return strings.HasSuffix(out, "all packages present"), nil
}

// lockFile takes an exclusive flock on path, waiting for ctx.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// goEnv is the environment for the go command: the local toolchain only.
func goEnv(set ...string) []string {
	return baseEnv(append([]string{"GOTOOLCHAIN=local", "GOWORK=off"}, set...)...)
}

// installAtomically moves a finished build into place with rename(2), so
// a cache entry is either absent or complete.
func installAtomically(built, final string) error {
	if err := os.Chmod(built, 0o755); err != nil {
		return err
	}
	return os.Rename(built, final)
}

// cachedBinary returns dir/name, building it first if the cache lacks it:
// build writes the binary at the path it is given, in a fresh directory of
// dir's that goes afterwards; the result is renamed into place only whole.
// cached says whether it was there already.
func cachedBinary(dir, name string, build func(tmp, bin string) error) (path string, cached bool, err error) {
	final := filepath.Join(dir, name)
	if isExecutable(final) {
		return final, true, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, name)
	if err := build(tmp, bin); err != nil {
		return "", false, err
	}
	if err := installAtomically(bin, final); err != nil {
		return "", false, err
	}
	return final, false, nil
}

// buildDockerd returns the cached dockerd, building it (about 6 minutes on
// 2 cores) with `go install` from the module proxy if needed. Builds run
// under nice: in CI other packages' tests run beside this one.
func buildDockerd(ctx context.Context, logf Logf) (string, bool, error) {
	return cachedBinary(filepath.Join(CacheDir(), "dockerd-"+DockerdVersion), "dockerd", func(tmp, _ string) error {
		logf("building dockerd %s with go install (about 6 minutes on 2 cores)", DockerdVersion)
		_, err := runCmd(ctx, goEnv("GOBIN="+tmp, "GOFLAGS=-buildvcs=false"), tmp, "nice", "-n", "10", "go", "install", DockerdModule+"@"+DockerdVersion)
		return err
	})
}

var selinuxReplace = regexp.MustCompile(`(?m)^replace\s+github\.com/opencontainers/selinux\s+=>.*$`)

// buildRunc returns the directory of the cached runc, building it if
// needed: the module from the proxy, without its replace of
// opencontainers/selinux (a directory the module zip does not contain),
// with -tags seccomp (Debian's runc 1.1.5 fails every container, and a
// runc without seccomp support fails them too: docs/swarm.md, "Running a
// real Swarm locally").
func buildRunc(ctx context.Context, logf Logf) (string, bool, error) {
	path, cached, err := cachedBinary(filepath.Join(CacheDir(), "runc-"+RuncVersion), "runc", func(tmp, bin string) error {
		logf("building runc %s with -tags seccomp", RuncVersion)
		out, err := runCmd(ctx, goEnv("GOFLAGS=-mod=mod"), tmp, "go", "mod", "download", "-json", RuncModule+"@"+RuncVersion)
		if err != nil {
			return err
		}
		var mod struct{ Dir string }
		if err := json.Unmarshal([]byte(out), &mod); err != nil || mod.Dir == "" {
			return fmt.Errorf("go mod download %s: no directory in %q", RuncModule, out)
		}
		src := filepath.Join(tmp, "src")
		if err := copyTree(mod.Dir, src); err != nil {
			return err
		}
		gomod := filepath.Join(src, "go.mod")
		b, err := os.ReadFile(gomod)
		if err != nil {
			return err
		}
		if err := os.WriteFile(gomod, selinuxReplace.ReplaceAll(b, nil), 0o644); err != nil {
			return err
		}
		if _, err := runCmd(ctx, goEnv("CGO_ENABLED=1", "GOFLAGS=-mod=mod -buildvcs=false"), src, "nice", "-n", "10", "go", "build", "-trimpath",
			"-tags", "seccomp", "-ldflags", "-X main.version="+strings.TrimPrefix(RuncVersion, "v"), "-o", bin, "."); err != nil {
			return err
		}
		out, err = runCmd(ctx, nil, "", bin, "features")
		var features struct {
			Linux struct {
				Seccomp struct{ Enabled *bool } `json:"seccomp"`
			} `json:"linux"`
		}
		if err != nil || json.Unmarshal([]byte(out), &features) != nil || features.Linux.Seccomp.Enabled == nil || !*features.Linux.Seccomp.Enabled {
			return fmt.Errorf("built runc lacks seccomp support: %v\n%s", err, out)
		}
		return nil
	})
	if err != nil {
		return "", false, err
	}
	return filepath.Dir(path), cached, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// copyTree copies a read-only module directory into a writable one.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		}
		return nil
	})
}

// PluginCaps is the CAPS value for deploy/build-plugin: CAP_SYS_RESOURCE
// only where the bounding set has it (runc refuses capabilities the
// bounding set lacks).
func PluginCaps() string {
	if v := os.Getenv("CAPS"); v != "" {
		return v
	}
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "CapBnd:"); ok {
				var bnd uint64
				if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%x", &bnd); err == nil && bnd&(1<<unix.CAP_SYS_RESOURCE) == 0 {
					return "CAP_SYS_ADMIN"
				}
			}
		}
	}
	return "CAP_SYS_ADMIN,CAP_SYS_RESOURCE"
}

// flavourBuildPackages are the Debian packages a flavour's cgo driver is
// built against (build-plugin ships their libraries at the same version).
var flavourBuildPackages = map[string][]string{"rbd": {"librados-dev", "librbd-dev"}}

// pluginInputsHash hashes what the plugin of a flavour is built from:
// deploy/, the driver's sources, go.mod/go.sum, the Go toolchain, the
// versions of the packages a cgo driver is built against, and the
// capabilities asked for.
func pluginInputsHash(ctx context.Context, root, caps, flavour string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "caps=%s\nflavour=%s\n", caps, flavour)
	goVersion, err := runCmd(ctx, goEnv(), root, "go", "env", "GOVERSION")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "go=%s\n", strings.TrimSpace(goVersion))
	if pkgs := flavourBuildPackages[flavour]; len(pkgs) > 0 {
		versions, err := runCmd(ctx, nil, root, "dpkg-query", append([]string{"-W", "-f", "${Package} ${Version}\n"}, pkgs...)...)
		if err != nil {
			return "", fmt.Errorf("the %s flavour is built against %s (scripts/install-deps installs them): %w", flavour, strings.Join(pkgs, ", "), err)
		}
		h.Write([]byte(versions))
	}
	var files []string
	for _, top := range []string{"deploy", "cmd", "pkg", "internal", "go.mod", "go.sum"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fi, _ := os.Stat(f)
		rel, _ := filepath.Rel(root, f)
		fmt.Fprintf(h, "%s %o %d\n", rel, fi.Mode().Perm(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// PluginBuilder is deploy/build-plugin, relative to the repository root.
const PluginBuilder = "deploy/build-plugin"

// buildPlugin returns a plugin directory of the given flavour ("" or
// "rbd") built by deploy/build-plugin, cached by a hash of its inputs.
func buildPlugin(ctx context.Context, logf Logf, root, flavour string) (string, bool, error) {
	if d := os.Getenv("SWARM_CSI_E2E_PLUGIN_DIR"); d != "" {
		// A prebuilt plugin directory, e.g. from a release.
		return d, true, nil
	}
	builder := filepath.Join(root, PluginBuilder)
	if !isExecutable(builder) {
		return "", false, fmt.Errorf("%s is missing or not executable: it builds the managed plugin", builder)
	}
	caps := PluginCaps()
	sum, err := pluginInputsHash(ctx, root, caps, flavour)
	if err != nil {
		return "", false, err
	}
	kind, args := "plain", []string{}
	if flavour != "" {
		kind, args = flavour, []string{"--with", flavour}
	}
	final := filepath.Join(CacheDir(), "plugin-"+kind+"-"+sum)
	if _, err := os.Stat(filepath.Join(final, "config.json")); err == nil {
		return final, true, nil
	}
	tmp, err := os.MkdirTemp(CacheDir(), "plugin-build-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "plugin")
	logf("building the plugin with %s %s (CAPS=%s)", PluginBuilder, strings.Join(args, " "), caps)
	if _, err := runCmd(ctx, baseEnv("CAPS="+caps, "GOTOOLCHAIN=local"), root, builder, append(args, out)...); err != nil {
		return "", false, err
	}
	for _, want := range []string{"config.json", "rootfs"} {
		if _, err := os.Stat(filepath.Join(out, want)); err != nil {
			return "", false, fmt.Errorf("%s produced no %s: %w", PluginBuilder, want, err)
		}
	}
	if err := os.Rename(out, final); err != nil {
		return "", false, err
	}
	// Keep the cache from growing with every source change.
	old, _ := filepath.Glob(filepath.Join(CacheDir(), "plugin-"+kind+"-*"))
	for _, o := range old {
		if o != final {
			os.RemoveAll(o)
		}
	}
	return final, false, nil
}

// BusyboxApplets are the commands the services use, linked to busybox.
var BusyboxApplets = []string{
	"sh", "cat", "dd", "sync", "sleep", "df", "ls", "test", "[", "echo", "printf",
	"sha256sum", "md5sum", "cmp", "stat", "mount", "mkdir", "rm", "cp", "mv", "touch",
	"head", "tail", "wc", "true", "false", "grep", "tr", "od", "seq", "date", "id",
	"env", "ps", "kill", "blockdev", "find", "du", "sed", "xargs", "hostname", "uname",
}

// writeBusyboxTar writes a rootfs with busybox-static's /bin/busybox and a
// symlink per applet.
func writeBusyboxTar(path string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	mtime := time.Unix(0, 0)
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "data"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: mtime}); err != nil {
		return err
	}
	if _, err := tw.Write(bb); err != nil {
		return err
	}
	for _, a := range BusyboxApplets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return err
		}
	}
	passwd := []byte("root:x:0:0:root:/:/bin/sh\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: mtime}); err != nil {
		return err
	}
	if _, err := tw.Write(passwd); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// BuildCommand builds the repository's command pkg (e.g.
// "./cmd/swarm-csi") into out with the local toolchain.
func BuildCommand(ctx context.Context, pkg, out string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	_, err = runCmd(ctx, baseEnv("GOTOOLCHAIN=local"), root, "go", "build", "-o", out, pkg)
	return err
}
