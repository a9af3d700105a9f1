// Package sanity runs the kubernetes-csi sanity suite (csi-test) against the
// swarm-csi driver binary, once per access mode:
//
//   - ext4:  mount access, CreateVolume parameter fsType=ext4
//   - xfs:   mount access, CreateVolume parameter fsType=xfs
//   - block: raw block access
//
// and once with upstream's default configuration (mode defaults, and one
// such mode per other backend): sanity.NewTestConfig() with nothing set but
// the address and paths, as a CO or a csi-sanity user who tunes nothing
// would run it. The other modes tune it: the access type and parameters
// above, the backend's mutable parameters, and the node's attach limit.
//
// csi-test drives its specs with Ginkgo v2, and Ginkgo allows RunSpecs only
// once per process. TestSanity therefore builds the driver, and for every
// mode starts a fresh driver process, re-executes this test binary as a
// child that runs exactly one Ginkgo suite against it (see TestMain and
// runSanityChild), then stops the driver with SIGTERM and checks that no
// loop device or mount was left behind.
//
// The test needs root and loop devices (and mkfs.xfs for the xfs mode).
// Without them it skips, unless CI=true is set: then it fails instead.
//
// Useful flags (after -args, or directly on the test binary):
//
//	-sanity.focus REGEXP   only run csi-sanity specs matching REGEXP
//	-sanity.skip REGEXP    skip csi-sanity specs matching REGEXP
//
// and -run 'TestSanity/xfs' selects a single mode. SWARM_CSI_SANITY_DRIVER_BIN
// names a prebuilt driver binary to test instead of building ./cmd/swarm-csi.
package sanity

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	csisanity "github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/mountinfo"
)

const driverPackage = "github.com/swarm-csi/swarm-csi/cmd/swarm-csi"

// Environment variables used to hand the configuration to the re-executed
// child process.
const (
	// envDriverBin optionally names a prebuilt driver binary to test
	// instead of building ./cmd/swarm-csi.
	envDriverBin = "SWARM_CSI_SANITY_DRIVER_BIN"

	envChildMode = "SWARM_CSI_SANITY_CHILD_MODE"
	envAddress   = "SWARM_CSI_SANITY_ADDRESS"
	envStaging   = "SWARM_CSI_SANITY_STAGING_PATH"
	envTarget    = "SWARM_CSI_SANITY_TARGET_PATH"
	envReport    = "SWARM_CSI_SANITY_JSON_REPORT"
	envFocus     = "SWARM_CSI_SANITY_FOCUS"
	envSkip      = "SWARM_CSI_SANITY_SKIP"
	envTimeout   = "SWARM_CSI_SANITY_TIMEOUT"
)

const (
	driverLogTailLines = 200
	readyTimeout       = 60 * time.Second
	stopTimeout        = 30 * time.Second
	leftoverWait       = 10 * time.Second
	maxMessageLen      = 4000
)

var (
	flagFocus = flag.String("sanity.focus", "", "only run csi-sanity specs whose full text matches this regular expression")
	flagSkip  = flag.String("sanity.skip", "", "skip csi-sanity specs whose full text matches this regular expression")
)

type mode struct {
	name       string
	accessType string            // TestConfig.TestVolumeAccessType
	params     map[string]string // TestConfig.TestVolumeParameters
	requires   []string          // host tools without which the mode is skipped
	// setup, if set, prepares what the mode's backend needs (a storage
	// system, a fake API) under dir, registers its teardown with
	// t.Cleanup, and returns extra driver arguments (--backend and the
	// backend's own flags) and environment variables.
	setup func(t *testing.T, dir string) (args, env []string)
	// mutable is the mode's TestVolumeMutableParameters.
	mutable map[string]string
	// defaults runs upstream's default configuration: accessType, params
	// and mutable are not used, nor is the attach limit tested.
	defaults bool
	// unsupported declares the specs that csi-test skips because the
	// backend lacks a feature and rightly does not advertise it. Each
	// must match at least one skipped spec and no spec that ran; any
	// other skip still fails the run in CI.
	unsupported []unsupportedSpecs
}

// unsupportedSpecs are csi-sanity specs a backend cannot run, and why.
type unsupportedSpecs struct {
	pattern *regexp.Regexp // matched against the spec's full text
	reason  string
}

// Backends other than loop add their modes from files of their own
// (sanity/<backend>_test.go) with modes = append(modes, ...) in init.

var modes = []mode{
	{name: "ext4", accessType: "mount", params: map[string]string{"fsType": "ext4"}},
	{name: "xfs", accessType: "mount", params: map[string]string{"fsType": "xfs"}, requires: []string{"mkfs.xfs"}},
	{name: "block", accessType: "block"},
	{name: "defaults", defaults: true, unsupported: []unsupportedSpecs{attachLimitOff}},
}

// attachLimitOff is the spec upstream's default configuration leaves out.
var attachLimitOff = unsupportedSpecs{
	regexp.MustCompile(` ControllerPublishVolume should fail when publishing more volumes than the node max attach limit$`),
	"upstream's default configuration leaves TestNodeVolumeAttachLimit off; the tuned modes run this spec",
}

// loopMutable is the loop backend's one mutable parameter.
var loopMutable = map[string]string{"directIO": "false"}

func modeByName(name string) (mode, bool) {
	for _, m := range modes {
		if m.name == name {
			return m, true
		}
	}
	return mode{}, false
}

// afterAll are run once every test has: teardowns of what several modes
// share (a storage system brought up once).
var afterAll []func()

func TestMain(m *testing.M) {
	if name := os.Getenv(envChildMode); name != "" {
		flag.Parse()
		os.Exit(runSanityChild(name))
	}
	code := m.Run()
	for _, f := range afterAll {
		f()
	}
	os.Exit(code)
}

// ginkgoFailer implements ginkgo.GinkgoTestingT for the child process.
type ginkgoFailer struct{ failed bool }

func (f *ginkgoFailer) Fail() { f.failed = true }

// runSanityChild runs in the re-executed test binary: one Ginkgo suite with
// the csi-sanity specs for one mode against an already running driver.
func runSanityChild(name string) int {
	m, ok := modeByName(name)
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown sanity mode %q\n", name)
		return 2
	}

	// Start from NewTestConfig and only change fields: this keeps the
	// defaults (IdempotentCount=10, TestVolumeSize=10 GiB, path timeouts).
	cfg := csisanity.NewTestConfig()
	cfg.Address = os.Getenv(envAddress)
	cfg.StagingPath = os.Getenv(envStaging)
	cfg.TargetPath = os.Getenv(envTarget)
	if !m.defaults {
		cfg.TestVolumeAccessType = m.accessType
		// Publish up to the node's limit and expect ResourceExhausted beyond it.
		cfg.TestNodeVolumeAttachLimit = true
		cfg.TestVolumeMutableParameters = loopMutable
		if m.mutable != nil {
			cfg.TestVolumeMutableParameters = m.mutable
		}
		if m.params != nil {
			cfg.TestVolumeParameters = maps.Clone(m.params)
		}
	}
	if cfg.Address == "" || cfg.StagingPath == "" || cfg.TargetPath == "" {
		fmt.Fprintln(os.Stderr, "sanity child: address, staging path and target path must be set")
		return 2
	}

	sc := csisanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)

	suiteCfg, repCfg := ginkgo.GinkgoConfiguration()
	if s := os.Getenv(envFocus); s != "" {
		suiteCfg.FocusStrings = append(suiteCfg.FocusStrings, s)
	}
	if s := os.Getenv(envSkip); s != "" {
		suiteCfg.SkipStrings = append(suiteCfg.SkipStrings, s)
	}
	if d, err := time.ParseDuration(os.Getenv(envTimeout)); err == nil && d > 0 {
		suiteCfg.Timeout = d
	}
	repCfg.NoColor = true
	repCfg.JSONReport = os.Getenv(envReport)

	var failer ginkgoFailer
	passed := ginkgo.RunSpecs(&failer, "swarm-csi sanity ("+name+")", suiteCfg, repCfg)
	sc.Finalize()
	if !passed || failer.failed {
		return 1
	}
	return 0
}

func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Require(t, fmt.Sprintf("csi-sanity needs root (loop devices, mkfs, mount); running as uid %d", os.Geteuid()))
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testenv.Require(t, fmt.Sprintf("csi-sanity needs loop devices: /dev/loop-control: %v (try scripts/install-deps or modprobe loop)", err))
	}

	bin := buildDriver(t)

	results := make(map[string]string)
	for _, m := range modes {
		results[m.name] = "not run (not selected by -run)"
		passed := t.Run(m.name, func(t *testing.T) {
			results[m.name] = "no result: failed before csi-sanity ran (see errors above)"
			defer func() {
				if t.Skipped() {
					results[m.name] = "skipped (see skip reason above)"
				}
			}()
			runMode(t, bin, m, results)
		})
		if !passed && !strings.HasSuffix(results[m.name], "[FAILED]") {
			results[m.name] += " [FAILED]"
		}
	}

	var b strings.Builder
	b.WriteString("csi-sanity summary (csi-test v5, IdempotentCount=10):")
	for _, m := range modes {
		fmt.Fprintf(&b, "\n  %-16s %s", m.name+":", results[m.name])
	}
	t.Log(b.String())
}

// built is the driver binary, built once for every test of the package.
var built struct {
	once      sync.Once
	bin, log  string
	err       error
	buildTime time.Duration
}

// buildTags are the go build flags giving this test binary's build tags,
// e.g. -tags ceph,pacific, with which the driver gets the rbd backend.
func buildTags() []string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-tags" && s.Value != "" {
				return []string{"-tags", s.Value}
			}
		}
	}
	return nil
}

func buildDriver(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv(envDriverBin); bin != "" {
		t.Logf("using prebuilt driver %s (%s is set)", bin, envDriverBin)
		return bin
	}
	built.once.Do(func() {
		goCmd := os.Getenv("GO")
		if goCmd == "" {
			goCmd = "go"
		}
		dir, err := os.MkdirTemp("", "swarm-csi-driver-")
		if err != nil {
			built.err = err
			return
		}
		afterAll = append(afterAll, func() { os.RemoveAll(dir) })
		bin := filepath.Join(dir, "swarm-csi")
		// Built as this test binary is: its tags, and -race.
		args := append([]string{"build"}, buildTags()...)
		if raceEnabled {
			args = append(args, "-race")
		}
		if driverTags != "" {
			args = append(args, "-tags", driverTags)
		}
		args = append(args, "-o", bin, driverPackage)
		cmd := exec.Command(goCmd, args...)
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("building the driver failed: %s %s: %v\n%s", goCmd, strings.Join(args, " "), err, out)
			return
		}
		built.bin, built.buildTime = bin, time.Since(start)
		built.log = fmt.Sprintf("built driver: %s %s (%s)", goCmd, strings.Join(args, " "), built.buildTime.Round(time.Millisecond))
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	t.Log(built.log)
	return built.bin
}

func runMode(t *testing.T, bin string, m mode, results map[string]string) {
	for _, tool := range m.requires {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, fmt.Sprintf("mode %s needs %s: %v (install it with scripts/install-deps)", m.name, tool, err))
		}
	}

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes, so keep the socket in a
	// short directory of its own rather than under the (long) test dir.
	sockDir, err := os.MkdirTemp("", "swarm-csi-sanity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "csi.sock")
	endpoint := "unix://" + sock

	var args, env []string
	if m.setup != nil {
		args, env = m.setup(t, dir)
	}
	d := startDriver(t, bin, endpoint, dataDir, filepath.Join(dir, "driver.log"), args, env)
	// Registered after t.TempDir, so it runs before the temp dir is removed.
	t.Cleanup(func() {
		d.stop(t)
		checkLeftovers(t, dir, dataDir)
		if t.Failed() {
			t.Logf("last %d lines of driver output (%s):\n%s", driverLogTailLines, d.logPath, tailFile(d.logPath, driverLogTailLines))
		}
	})

	info, err := d.waitReady(t.Context(), sock)
	if err != nil {
		t.Fatalf("driver did not become ready on %s: %v", endpoint, err)
	}
	t.Logf("driver %s %s ready on %s (data dir %s)", info.GetName(), info.GetVendorVersion(), endpoint, dataDir)

	if summary := runSanityProcess(t, m, endpoint, dir, d); summary != "" {
		results[m.name] = summary
	}
}

// runSanityProcess re-executes the test binary to run the csi-sanity suite
// for mode m and reports the outcome. It returns the summary line with the
// spec counts, or "" if there is no usable report.
func runSanityProcess(t *testing.T, m mode, endpoint, dir string, d *driverProc) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("cannot find test binary to re-execute: %v", err)
	}
	reportPath := filepath.Join(dir, "sanity-report.json")
	outPath := filepath.Join(dir, "sanity-ginkgo.log")
	outFile, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()

	ctx := t.Context()
	suiteTimeout := time.Duration(0)
	if deadline, ok := t.Deadline(); ok {
		// Leave time for Ginkgo to interrupt itself and for our cleanup
		// (driver stop, leftover checks) before go test's own timeout.
		remaining := time.Until(deadline)
		reserve := min(3*time.Minute, remaining/4)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-reserve))
		defer cancel()
		suiteTimeout = remaining - reserve - reserve/3
	}

	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(),
		envChildMode+"="+m.name,
		envAddress+"="+endpoint,
		envStaging+"="+filepath.Join(dir, "staging"),
		envTarget+"="+filepath.Join(dir, "target"),
		envReport+"="+reportPath,
		envFocus+"="+*flagFocus,
		envSkip+"="+*flagSkip,
	)
	if suiteTimeout > 0 {
		cmd.Env = append(cmd.Env, envTimeout+"="+suiteTimeout.String())
	}
	cmd.Stdout = outFile
	cmd.Stderr = outFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// On timeout interrupt Ginkgo first, so it runs its cleanup and writes
	// the report; kill it only if that does not help.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute

	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start).Round(100 * time.Millisecond)

	report, repErr := readReport(reportPath)
	if repErr != nil {
		t.Errorf("csi-sanity %s: no usable Ginkgo report (%v); child exit: %v; last %d lines of Ginkgo output (%s):\n%s",
			m.name, repErr, runErr, driverLogTailLines, outPath, tailFile(outPath, driverLogTailLines))
		return ""
	}

	var passed, failed, skipped, pending, unsupported int
	var failures, suiteFailures, skips []types.SpecReport
	declared := make([]int, len(m.unsupported)) // skipped specs per declaration
	for _, sr := range report.SpecReports {
		if sr.LeafNodeType != types.NodeTypeIt {
			if sr.State.Is(types.SpecStateFailureStates) {
				suiteFailures = append(suiteFailures, sr)
			}
			continue
		}
		switch {
		case sr.State == types.SpecStatePassed:
			passed++
		case sr.State.Is(types.SpecStateFailureStates):
			failed++
			failures = append(failures, sr)
		case sr.State == types.SpecStateSkipped:
			skipped++
			if i := matchUnsupported(m, sr); i >= 0 {
				unsupported++
				declared[i]++
				t.Logf("csi-sanity %s: spec skipped, declared unsupported: %s (%s)", m.name, sr.FullText(), m.unsupported[i].reason)
				continue
			}
			skips = append(skips, sr)
		case sr.State == types.SpecStatePending:
			pending++
		}
		if i := matchUnsupported(m, sr); i >= 0 && sr.State != types.SpecStateSkipped {
			t.Errorf("csi-sanity %s: spec %s was declared unsupported (%s) but %s", m.name, sr.FullText(), m.unsupported[i].reason, sr.State)
		}
	}
	if *flagFocus == "" && *flagSkip == "" {
		for i, n := range declared {
			if n == 0 {
				t.Errorf("csi-sanity %s: the unsupported specs %q (%s) match no skipped spec: the declaration is stale",
					m.name, m.unsupported[i].pattern, m.unsupported[i].reason)
			}
		}
	}
	total := passed + failed + skipped + pending
	summary := fmt.Sprintf("%d specs: %d passed, %d failed, %d skipped (%d declared unsupported), %d pending (%s)",
		total, passed, failed, skipped, unsupported, pending, elapsed)
	if *flagFocus != "" || *flagSkip != "" {
		summary += fmt.Sprintf(" [filtered: -sanity.focus=%q -sanity.skip=%q]", *flagFocus, *flagSkip)
	}
	if m.defaults {
		t.Logf("csi-sanity %s (upstream's default configuration): %s", m.name, summary)
	} else {
		t.Logf("csi-sanity %s (access type %s, parameters %v): %s", m.name, m.accessType, m.params, summary)
	}

	for _, sr := range failures {
		t.Errorf("csi-sanity %s: spec %s: %s\n    %s\n    at %s",
			m.name, strings.ToUpper(sr.State.String()), sr.FullText(), indent(truncate(failureText(sr)), "    "), sr.Failure.Location)
	}
	for _, sr := range skips {
		msg := fmt.Sprintf("csi-sanity %s: spec SKIPPED: %s: %s", m.name, sr.FullText(), strings.TrimSpace(sr.Failure.Message))
		if testenv.CI() {
			t.Error(msg + " (CI=true: no spec may be skipped)")
		} else {
			t.Log(msg)
		}
	}
	for _, sr := range suiteFailures {
		t.Errorf("csi-sanity %s: %s node %s: %s\n    at %s",
			m.name, sr.LeafNodeType, strings.ToUpper(sr.State.String()), indent(truncate(failureText(sr)), "    "), sr.Failure.Location)
	}
	if len(report.SpecialSuiteFailureReasons) > 0 {
		t.Errorf("csi-sanity %s: suite failure: %s", m.name, strings.Join(report.SpecialSuiteFailureReasons, "; "))
	}
	ok := runErr == nil && report.SuiteSucceeded && failed == 0 && len(suiteFailures) == 0
	if !ok && failed == 0 && len(suiteFailures) == 0 {
		t.Errorf("csi-sanity %s: child exited with %v (suite succeeded: %v); last %d lines of Ginkgo output (%s):\n%s",
			m.name, runErr, report.SuiteSucceeded, driverLogTailLines, outPath, tailFile(outPath, driverLogTailLines))
	}
	if d.exited() {
		t.Errorf("csi-sanity %s: driver exited during the suite: %v", m.name, d.waitErr)
	}
	return summary
}

// matchUnsupported returns the index of the mode's first unsupported
// declaration matching a spec, or -1.
func matchUnsupported(m mode, sr types.SpecReport) int {
	for i, u := range m.unsupported {
		if u.pattern.MatchString(sr.FullText()) {
			return i
		}
	}
	return -1
}

func failureText(sr types.SpecReport) string {
	msg := dropStructDumps(sr.Failure.Message)
	if sr.Failure.ForwardedPanic != "" {
		msg += "\npanic: " + sr.Failure.ForwardedPanic
	}
	if sr.Failure.AdditionalFailure != nil {
		msg += "\nadditional failure: " + sr.Failure.AdditionalFailure.Failure.Message
	}
	return msg
}

// dropStructDumps shortens Gomega failure messages for the test log by
// removing the multi-line struct dumps Gomega prints after an error value
// (a line "{" up to the "}" with the same indentation). The error text
// itself stays; the full message is in the Ginkgo output.
func dropStructDumps(msg string) string {
	var out []string
	closing := ""
	for _, line := range strings.Split(msg, "\n") {
		if closing != "" {
			if line == closing {
				closing = ""
			}
			continue
		}
		if strings.TrimSpace(line) == "{" {
			closing = strings.TrimSuffix(line, "{") + "}"
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

func readReport(path string) (types.Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return types.Report{}, err
	}
	var reports []types.Report
	if err := json.Unmarshal(data, &reports); err != nil {
		return types.Report{}, fmt.Errorf("decode %s: %w", path, err)
	}
	if len(reports) != 1 {
		return types.Report{}, fmt.Errorf("%s: expected 1 report, found %d", path, len(reports))
	}
	return reports[0], nil
}

// driverProc is a running swarm-csi driver process.
type driverProc struct {
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{}
	waitErr error // set before done is closed
	stopped bool
}

func startDriver(t *testing.T, bin, endpoint, dataDir, logPath string, extraArgs, env []string) *driverProc {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--endpoint", endpoint,
		"--data-dir", dataDir,
		"--node-id", "sanity-node",
		// A small limit keeps the attach-limit spec, which publishes up to
		// it, quick.
		"--max-volumes-per-node", "16",
		"--log-level", "debug",
		// The background growth check takes a volume's lock while it grows
		// one; a call meanwhile is Aborted, which a CO retries and
		// csi-sanity does not (it calls NodeExpandVolume right after
		// ControllerExpandVolume). It has tests of its own (pkg/node).
		"--grow-interval", "0",
	)
	cmd.Args = append(cmd.Args, extraArgs...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If this test process dies, do not leave the driver running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting driver: %v", err)
	}
	d := &driverProc{cmd: cmd, logPath: logPath, logFile: logFile, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	return d
}

func (d *driverProc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// waitReady waits until the driver answers GetPluginInfo on sock.
func (d *driverProc) waitReady(ctx context.Context, sock string) (*csi.GetPluginInfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := csi.NewIdentityClient(conn)

	var lastErr error
	for {
		select {
		case <-d.done:
			return nil, fmt.Errorf("driver exited before it was ready: %v", d.waitErr)
		default:
		}
		if _, err := os.Stat(sock); err != nil {
			lastErr = err
		} else {
			callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := client.GetPluginInfo(callCtx, &csi.GetPluginInfoRequest{})
			callCancel()
			if err == nil {
				return info, nil
			}
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
		case <-d.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and expects the driver to exit with status 0.
func (d *driverProc) stop(t *testing.T) {
	t.Helper()
	if d.stopped {
		return
	}
	d.stopped = true
	defer d.logFile.Close()

	if d.exited() {
		t.Errorf("driver exited before it was stopped: %v", d.waitErr)
		return
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("sending SIGTERM to driver: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		t.Errorf("driver did not exit within %s after SIGTERM; sending SIGQUIT for a goroutine dump", stopTimeout)
		_ = d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		return
	}
	if d.waitErr != nil {
		t.Errorf("driver did not exit cleanly after SIGTERM: %v", d.waitErr)
	}
	if data, err := os.ReadFile(d.logPath); err == nil && bytes.Contains(data, []byte("WARNING: DATA RACE")) {
		t.Errorf("the race detector reported a data race in the driver (see driver output)")
	}
}

// checkLeftovers asserts that, after the driver stopped, no loop device is
// backed by a file under dir (the data directory, or the images of a fake
// cloud beside it) and nothing is mounted under dir. Anything found is
// reported and then cleaned up so the host stays usable.
func checkLeftovers(t *testing.T, dir, dataDir string) {
	t.Helper()
	dirs := resolvedPaths(dir)

	var loops []loopDevice
	var mounts []string
	var err error
	deadline := time.Now().Add(leftoverWait)
	for {
		// Loop devices whose last opener goes away are detached
		// asynchronously (autoclear), so give the kernel a moment.
		loops, err = loopDevicesUnder(dirs)
		if err != nil {
			t.Errorf("listing loop devices: %v", err)
		}
		mounts, err = mountsUnder(dirs)
		if err != nil {
			t.Errorf("reading /proc/self/mountinfo: %v", err)
		}
		if (len(loops) == 0 && len(mounts) == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}

	for _, mp := range mounts {
		t.Errorf("left behind: mount at %s", mp)
	}
	for _, l := range loops {
		t.Errorf("left behind: loop device %s backed by %s", l.dev, l.backingFile)
	}
	if len(mounts) == 0 && len(loops) == 0 {
		t.Logf("nothing left behind: no mounts or loop devices under %s (data dir %s)", dir, dataDir)
	}

	// Best-effort cleanup, deepest mount first.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			t.Logf("cleanup: unmount %s: %v", mp, err)
		}
	}
	for _, l := range loops {
		if err := detachLoop(l.dev); err != nil {
			t.Logf("cleanup: detach %s: %v", l.dev, err)
		}
	}
}

func resolvedPaths(p string) []string {
	paths := []string{filepath.Clean(p)}
	if r, err := filepath.EvalSymlinks(p); err == nil && r != paths[0] {
		paths = append(paths, r)
	}
	return paths
}

func isUnder(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

type loopDevice struct {
	dev         string
	backingFile string
}

func loopDevicesUnder(dirs []string) ([]loopDevice, error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var found []loopDevice
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if isUnder(backing, dirs) {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			found = append(found, loopDevice{dev: dev, backingFile: backing})
		}
	}
	return found, nil
}

func mountsUnder(dirs []string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := mountinfo.Unescape(fields[4]); isUnder(mp, dirs) {
			found = append(found, mp)
		}
	}
	return found, sc.Err()
}

func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines omitted)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

func truncate(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxMessageLen {
		return s[:maxMessageLen] + " ...(truncated)"
	}
	return s
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(s, "\n", "\n"+prefix)
}
