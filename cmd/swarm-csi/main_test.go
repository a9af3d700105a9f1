package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// envOf returns a getenv that reads m.
func envOf(m map[string]string) func(string) string {
	return func(name string) string { return m[name] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, envOf(nil), io.Discard)
	host, _ := os.Hostname()
	if !backend.ValidNodeID(host) {
		// The default node id is the hostname; an unusable one must be
		// reported as a node id problem.
		if err == nil || !strings.Contains(err.Error(), "--node-id") {
			t.Fatalf("hostname %q is no node id, got %v", host, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		endpoint:          "unix:///run/swarm-csi/csi.sock",
		dataDir:           "/var/lib/swarm-csi",
		nodeID:            host,
		driverName:        "swarm-csi",
		backend:           "loop",
		logLevel:          "info",
		maxVolumesPerNode: 128,
	}
	if got := *c; got.open == nil || !sameSettings(got, want) {
		t.Fatalf("defaults %+v, want %+v with an opener", got, want)
	}
}

// sameSettings compares configs without their opener.
func sameSettings(a, b config) bool {
	return a.endpoint == b.endpoint && a.dataDir == b.dataDir && a.nodeID == b.nodeID &&
		a.driverName == b.driverName && a.backend == b.backend && a.logLevel == b.logLevel &&
		a.maxVolumesPerNode == b.maxVolumesPerNode && a.showVersion == b.showVersion
}

var fullEnv = map[string]string{
	"CSI_ENDPOINT":         "/run/docker/plugins/csi.sock",
	"DATA_DIR":             "/srv/csi",
	"NODE_ID":              "node-7",
	"DRIVER_NAME":          "csi.example.com",
	"BACKEND":              "loop",
	"LOG_LEVEL":            "debug",
	"MAX_VOLUMES_PER_NODE": "5",
}

func TestParseConfigEnv(t *testing.T) {
	// Docker plugin settings arrive as env (docker plugin set).
	c, err := parseConfig(nil, envOf(fullEnv), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{endpoint: "/run/docker/plugins/csi.sock", dataDir: "/srv/csi", nodeID: "node-7",
		driverName: "csi.example.com", backend: "loop", logLevel: "debug", maxVolumesPerNode: 5}
	if !sameSettings(*c, want) {
		t.Fatalf("from env %+v, want %+v", *c, want)
	}
}

func TestParseConfigFlagsOverrideEnv(t *testing.T) {
	env := map[string]string{}
	for k, v := range fullEnv {
		env[k] = v
	}
	env["LOG_LEVEL"] = "bogus" // a bad env value overridden by a flag is fine
	env["MAX_VOLUMES_PER_NODE"] = "zero"
	c, err := parseConfig([]string{
		"--endpoint", "unix:///tmp/x.sock",
		"-data-dir=/data",
		"--node-id=worker.2",
		"--driver-name=swarm-csi",
		"--backend=loop",
		"--log-level=warn",
		"--max-volumes-per-node=9",
	}, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{endpoint: "unix:///tmp/x.sock", dataDir: "/data", nodeID: "worker.2",
		driverName: "swarm-csi", backend: "loop", logLevel: "warn", maxVolumesPerNode: 9}
	if !sameSettings(*c, want) {
		t.Fatalf("got %+v, want %+v", *c, want)
	}
}

func TestParseConfigInvalid(t *testing.T) {
	tests := []struct {
		flag, env string
		values    []string
		flagOnly  []string // values an env var cannot carry ("" means unset)
	}{
		{"log-level", "LOG_LEVEL", []string{"verbose", "info+2", "debug-4", "0"}, nil},
		{"endpoint", "CSI_ENDPOINT", []string{"tcp://127.0.0.1:10000", "relative.sock", "unix://relative.sock"}, []string{""}},
		{"data-dir", "DATA_DIR", []string{"relative/dir", "./data"}, []string{""}},
		{"node-id", "NODE_ID", []string{"a/b", "../etc", "-lead", ".hidden", "has space", strings.Repeat("n", 129)}, []string{""}},
		{"driver-name", "DRIVER_NAME", []string{"-bad", "bad-", "under_score", "a/b", strings.Repeat("d", 64)}, []string{""}},
		{"backend", "BACKEND", []string{"ceph", "LOOP", "loop "}, []string{""}},
		{"max-volumes-per-node", "MAX_VOLUMES_PER_NODE", []string{"0", "-1", "many", "1.5", "99999999999999999999"}, []string{""}},
	}
	for _, tt := range tests {
		check := func(t *testing.T, c *config, err error) {
			t.Helper()
			if err == nil {
				t.Fatalf("accepted: %+v", *c)
			}
			if !strings.Contains(err.Error(), "--"+tt.flag) || !strings.Contains(err.Error(), tt.env) {
				t.Fatalf("error %q names neither --%s nor %s", err, tt.flag, tt.env)
			}
		}
		for _, v := range append(tt.values, tt.flagOnly...) {
			t.Run(tt.flag+"="+v, func(t *testing.T) {
				c, err := parseConfig([]string{"--" + tt.flag + "=" + v}, envOf(map[string]string{"NODE_ID": "n1"}), io.Discard)
				check(t, c, err)
			})
		}
		for _, v := range tt.values {
			t.Run(tt.env+"="+v, func(t *testing.T) {
				env := map[string]string{"NODE_ID": "n1", tt.env: v}
				c, err := parseConfig(nil, envOf(env), io.Discard)
				check(t, c, err)
			})
		}
	}
}

func TestParseConfigArguments(t *testing.T) {
	env := envOf(map[string]string{"NODE_ID": "n1"})
	if _, err := parseConfig([]string{"--endpoint=/x.sock", "extra"}, env, io.Discard); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Errorf("stray argument: %v", err)
	}
	if _, err := parseConfig([]string{"--no-such-flag"}, env, io.Discard); err == nil {
		t.Error("unknown flag accepted")
	}
	if _, err := parseConfig([]string{"-h"}, env, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	// --version prints the version whatever else is wrong.
	c, err := parseConfig([]string{"--version", "--log-level=loud"}, envOf(map[string]string{"NODE_ID": "a/b"}), io.Discard)
	if err != nil || !c.showVersion {
		t.Errorf("--version: %+v, %v", c, err)
	}
}

func TestParseLevel(t *testing.T) {
	for _, s := range []string{"debug", "info", "warn", "error", "DEBUG", "Warn"} {
		if _, err := parseLevel(s); err != nil {
			t.Errorf("parseLevel(%q): %v", s, err)
		}
	}
}

// TestLoopBackendOpens checks the wiring of the loop backend: the opener
// chosen by --backend=loop serves both sides on the data directory.
func TestLoopBackendOpens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c, err := parseConfig([]string{"--backend=loop", "--data-dir=" + dir, "--node-id=n1"}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	be, err := c.open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if be.controller == nil || be.node == nil || len(be.topology) == 0 {
		t.Fatalf("opened backend %+v", be)
	}
	if name := be.controller.Info().Name; name != "loop" {
		t.Fatalf("backend %q, want loop", name)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes")); err != nil {
		t.Fatalf("data directory not set up: %v", err)
	}
}
