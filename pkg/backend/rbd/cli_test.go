package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// fakeRunner records every command and answers from a table keyed by the
// command's words after the connection options (e.g. "device list"),
// falling back to ok with no output.
type fakeRunner struct {
	mu      sync.Mutex
	calls   [][]string
	answers map[string]func(args []string) ([]byte, error)
}

func (f *fakeRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, append([]string{name}, args...))
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rest := args
	// Drop -c CONF --id USER --keyring PATH.
	if len(rest) >= 6 && rest[0] == "-c" && rest[2] == "--id" && rest[4] == "--keyring" {
		rest = rest[6:]
	}
	for n := min(3, len(rest)); n > 0; n-- {
		if h := f.answers[strings.Join(rest[:n], " ")]; h != nil {
			return h(rest)
		}
	}
	return nil, nil
}

func (f *fakeRunner) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.calls))
	for i, c := range f.calls {
		out[i] = strings.Join(c, " ")
	}
	return out
}

func exitErr(code int, stderr string) error { return &ExitError{Code: code, Stderr: stderr} }

// newTestBackend is a backend on the cluster cl, whose attach tools run
// nothing.
func newTestBackend(t *testing.T, cl cluster) *Backend {
	t.Helper()
	return newBackendWith(t, cl, &fakeRunner{})
}

// newAttachBackend is a backend whose attach tools run through run, on an
// empty fake cluster.
func newAttachBackend(t *testing.T, run Runner) *Backend {
	t.Helper()
	return newBackendWith(t, newFakeCeph(), run)
}

func newBackendWith(t *testing.T, cl cluster, run Runner) *Backend {
	t.Helper()
	b, err := newBackend(Config{
		Monitors: "10.0.0.1:6789", Pool: "rbd", User: "swarm-csi", Key: testKey,
		Prefix: "test", StateDir: filepath.Join(t.TempDir(), "rbd"), Runner: run,
	}, func(Config, string) (cluster, error) { return cl, nil })
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const testKey = "AQBVdkJpAAAAABAAtfQEGcq5JXH5xZ4Pu5ABCQ=="

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		kind Kind
		code codes.Code
	}{
		{exitErr(2, "rbd: error opening image x: (2) No such file or directory\n"), KindNotFound, codes.NotFound},
		{exitErr(17, "2026-11-23T12:41:28.331+0000 7f -1 librbd: exists\nrbd: create error: (17) File exists\n"), KindExists, codes.AlreadyExists},
		{exitErr(16, "rbd: error: image still has watchers\n"), KindBusy, codes.FailedPrecondition},
		{exitErr(39, "rbd: image has snapshots\n"), KindBusy, codes.FailedPrecondition},
		{exitErr(110, "rbd: couldn't connect to the cluster!\nrbd: listing images failed: (110) Connection timed out\n"), KindUnreachable, codes.Unavailable},
		{exitErr(110, "rbd: resize error: (110) Connection timed out\n"), KindTimeout, codes.DeadlineExceeded},
		{exitErr(13, "rbd: couldn't connect to the cluster!\nrbd: listing images failed: (13) Permission denied\n"), KindAuth, codes.Unauthenticated},
		{exitErr(1, "rbd: create error: (1) Operation not permitted\n"), KindDenied, codes.PermissionDenied},
		{exitErr(28, "rbd: (28) No space left on device\n"), KindNoSpace, codes.ResourceExhausted},
		{exitErr(22, "rbd: invalid feature\n"), KindInvalid, codes.InvalidArgument},
		{exitErr(5, "rbd: (5) Input/output error\n"), KindOther, codes.Internal},
		{context.DeadlineExceeded, KindTimeout, codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		err := classify("rbd info rbd/x", tt.err)
		if !errors.Is(err, tt.kind) {
			t.Errorf("%v: kind of %v is not %v", tt.err, err, tt.kind)
		}
		if got := csierr.Code(err); got != tt.code {
			t.Errorf("%v: code %v, want %v", tt.err, got, tt.code)
		}
		if !strings.HasPrefix(err.Error(), "rbd info rbd/x: ") {
			t.Errorf("message %q does not name the command", err)
		}
	}
	// The message is the tool's own last line, not a library log line.
	err := classify("rbd create rbd/x", exitErr(17, "2026-11-23T12:41:28.331+0000 7f9943c99380 -1 librbd: rbd image x already exists\n\nrbd: create error: (17) File exists\n"))
	if err.Error() != "rbd create rbd/x: rbd: create error: (17) File exists" {
		t.Errorf("message %q", err)
	}
	// A failure to start is passed on as it is.
	if err := classify("rbd ls", errors.New("exec: rbd: not found")); csierr.Code(err) != codes.Internal || !strings.Contains(err.Error(), "not found") {
		t.Errorf("start failure: %v", err)
	}
}

// Every command carries the configuration and the keyring's path, never
// the key, and is bounded by the call timeout.
func TestCommandsCarryNoKey(t *testing.T) {
	run := &fakeRunner{answers: map[string]func([]string) ([]byte, error){
		"ls": func([]string) ([]byte, error) { return nil, nil },
	}}
	b := newAttachBackend(t, run)
	if _, err := b.cli.rbd(context.Background(), b.creds, "rbd", "ls", "rbd"); err != nil {
		t.Fatal(err)
	}
	cmd := run.commands()[0]
	want := fmt.Sprintf("rbd -c %s --id swarm-csi --keyring %s ls rbd", b.cli.conf, b.creds.keyring)
	if cmd != want {
		t.Fatalf("command %q, want %q", cmd, want)
	}
	if strings.Contains(cmd, testKey) {
		t.Fatal("the key is on the command line")
	}
	fi, err := os.Stat(b.creds.keyring)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring %v, %v; want mode 0600", fi, err)
	}
	kr, _ := os.ReadFile(b.creds.keyring)
	if string(kr) != "[client.swarm-csi]\n\tkey = "+testKey+"\n" {
		t.Fatalf("keyring holds %q", kr)
	}
	conf, _ := os.ReadFile(b.cli.conf)
	for _, want := range []string{"mon host = 10.0.0.1:6789\n", "client mount timeout = 8\n", "rbd default clone format = 2\n",
		"run dir = " + filepath.Join(b.cfg.StateDir, "run") + "\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("ceph.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(string(conf), testKey) {
		t.Error("ceph.conf holds the key")
	}

	// A call that does not end in time is stopped, DeadlineExceeded.
	slow := runnerFunc(func(ctx context.Context, _ string, _ ...string) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	b.cli.run, b.cli.timeout = slow, 20*time.Millisecond
	_, err = b.cli.rbd(context.Background(), b.creds, "rbd/x", "info", "rbd/x")
	if csierr.Code(err) != codes.DeadlineExceeded || !errors.Is(err, KindTimeout) {
		t.Fatalf("slow call: %v", err)
	}
}

type runnerFunc func(ctx context.Context, name string, args ...string) ([]byte, error)

func (f runnerFunc) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return f(ctx, name, args...)
}

// A CSI secret's key takes precedence over the configured one, and reaches
// the tools as a keyring file too.
func TestSecretsTakePrecedence(t *testing.T) {
	b := newTestBackend(t, newFakeCeph())
	const other = "AQCDdkJpAAAAABAAbSpeELlbuCc7QdVAFmw3tw=="
	ctx := backend.WithSecrets(context.Background(), map[string]string{SecretUserKey: other, SecretUserID: "client.tenant"})
	cr, err := b.credsFor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cr.user != "tenant" || cr.keyring == b.creds.keyring {
		t.Fatalf("creds %+v", cr)
	}
	kr, _ := os.ReadFile(cr.keyring)
	if string(kr) != "[client.tenant]\n\tkey = "+other+"\n" {
		t.Fatalf("keyring holds %q", kr)
	}
	if cr, err := b.credsFor(context.Background()); err != nil || cr != b.creds {
		t.Fatalf("without secrets: %+v, %v", cr, err)
	}
	for _, bad := range []map[string]string{
		{SecretUserKey: "not a key"},
		{SecretUserKey: other, SecretUserID: "bad/user"},
		{SecretUserID: "tenant"},
	} {
		_, err := b.credsFor(backend.WithSecrets(context.Background(), bad))
		if csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("secrets %v: %v, want InvalidArgument", bad, err)
		}
		if err != nil && strings.Contains(err.Error(), "not a key") {
			t.Errorf("the error repeats the secret: %v", err)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring")
	if err := os.WriteFile(keyring, []byte("[client.admin]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := Config{Monitors: "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]", Pool: "rbd", User: "admin", Keyring: keyring,
		Prefix: "swarm-csi", StateDir: filepath.Join(dir, "state")}
	if err := good.check(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	tests := []struct {
		field  string
		change func(*Config)
	}{
		{"monitors", func(c *Config) { c.Monitors = "" }},
		{"monitors", func(c *Config) { c.Monitors = "10.0.0.1\nkeyring = /etc/x" }},
		{"pool", func(c *Config) { c.Pool = "../x" }},
		{"data-pool", func(c *Config) { c.DataPool = "a b" }},
		{"user", func(c *Config) { c.User = "client.admin" }},
		{"image-features", func(c *Config) { c.ImageFeatures = "layering;rm -rf" }},
		{"prefix", func(c *Config) { c.Prefix = "Upper" }},
		{"key", func(c *Config) { c.Key = testKey }}, // and a keyring
		{"key", func(c *Config) { c.Keyring = "" }},
		{"key", func(c *Config) { c.Keyring, c.Key = "", "short" }},
		{"keyring", func(c *Config) { c.Keyring = "relative" }},
		{"keyring", func(c *Config) { c.Keyring = filepath.Join(dir, "missing") }},
		{"state-dir", func(c *Config) { c.StateDir = "state" }},
	}
	for _, tt := range tests {
		c := good
		tt.change(&c)
		var ce *ConfigError
		if err := c.check(); !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%+v: %v, want an error for %s", c, err, tt.field)
		}
	}
}

func TestIDs(t *testing.T) {
	n := names{prefix: "swarm-csi"}
	h := nameHash("pgdata")
	id := "rbd/" + n.volumeImage(h)
	ref, hash, ok := n.parseVolumeID(id)
	if !ok || hash != h || ref != (imageRef{"rbd", "swarm-csi-vol-" + h}) {
		t.Fatalf("parseVolumeID(%q) = %v, %q, %v", id, ref, hash, ok)
	}
	sid := id + "@" + n.snapshotName(h)
	sref, shash, ok := n.parseSnapshotID(sid)
	if !ok || shash != h || sref.String() != sid {
		t.Fatalf("parseSnapshotID(%q) = %v, %q, %v", sid, sref, shash, ok)
	}
	for _, bad := range []string{
		"", "rbd", "rbd/", "/" + n.volumeImage(h), "../rbd/" + n.volumeImage(h), "rbd/other-vol-" + h,
		"rbd/" + n.volumeImage(h) + "x", "rbd/" + n.volumeImage(h)[:40], "rbd/" + n.volumeImage(strings.ToUpper(h)),
		"rbd/a/" + n.volumeImage(h), "-rbd/" + n.volumeImage(h), "rbd/important-image",
	} {
		if _, _, ok := n.parseVolumeID(bad); ok {
			t.Errorf("volume id %q accepted", bad)
		}
		if _, _, ok := n.parseSnapshotID(bad + "@" + n.snapshotName(h)); ok {
			t.Errorf("snapshot id %q accepted", bad)
		}
	}
	if _, _, ok := n.parseSnapshotID(id + "@" + n.cloneSnapshot(h)); ok {
		t.Error("a clone's temporary snapshot passes for a snapshot id")
	}
	if n.ours("swarm-csi-index") || !n.ours(n.volumeImage(h)) {
		t.Error("ours")
	}
}

// Nodes that list the same monitors in another order report the same
// topology.
func TestTopology(t *testing.T) {
	got := monitorList("[v2:10.0.0.2:3300,v1:10.0.0.2:6789], 10.0.0.1 ,10.0.0.3:6789")
	want := []string{"[v2:10.0.0.2:3300,v1:10.0.0.2:6789]", "10.0.0.1", "10.0.0.3:6789"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("monitorList = %q", got)
	}
	a := newTestBackend(t, newFakeCeph())
	b := newTestBackend(t, newFakeCeph())
	a.cfg.Monitors, b.cfg.Monitors = "10.0.0.1,10.0.0.2", "10.0.0.2,10.0.0.1"
	if a.Topology()[TopologyKey] != b.Topology()[TopologyKey] {
		t.Fatal("the monitors' order changes the topology")
	}
	b.cfg.Pool = "other"
	if a.Topology()[TopologyKey] == b.Topology()[TopologyKey] {
		t.Fatal("another pool has the same topology")
	}
}
