package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// openedBackend is a backend ready to serve.
type openedBackend struct {
	controller backend.Controller
	node       backend.Node
	// topology is what this node reports in NodeGetInfo.
	topology map[string]string
	// nodeID, if set, is the node id the storage dictates (a cloud
	// server's id), in place of --node-id.
	nodeID string
	// stateDir, if set, holds the node's state in place of
	// <data-dir>/node-state, so that plugins of two backends sharing one
	// data directory keep apart what each has staged.
	stateDir string
}

// opener validates a backend's settings and opens it.
type opener func(ctx context.Context, c *config) (*openedBackend, error)

// configureFunc registers a backend's own flags (each with an environment
// fallback) and returns its opener, which reads them once parsed.
type configureFunc func(fs *flag.FlagSet, env func(name, def string) string) opener

// backendDefs holds the backends. Each registers itself from a file of its
// own, backend_<name>.go.
var backendDefs = map[string]configureFunc{}

func registerBackend(name string, configure configureFunc) { backendDefs[name] = configure }

func backendNames() string {
	names := make([]string, 0, len(backendDefs))
	for n := range backendDefs {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// configureBackends registers every backend's flags and returns the openers.
func configureBackends(fs *flag.FlagSet, env func(name, def string) string) map[string]opener {
	openers := map[string]opener{}
	for name, configure := range backendDefs {
		openers[name] = configure(fs, env)
	}
	return openers
}

func unknownBackend(name string) error {
	return fmt.Errorf("--backend (BACKEND) %q: the backends are: %s", name, backendNames())
}

// settingError names the setting a backend refused (a
// backend.ConfigError) by its flag and variable, as settings, the
// backend's fields to those, gives them.
func settingError(err error, settings map[string]string) error {
	var ce *backend.ConfigError
	if errors.As(err, &ce) && settings[ce.Field] != "" {
		return fmt.Errorf("%s: %s", settings[ce.Field], ce.Msg)
	}
	return err
}

// callTimeout is a Ceph backend's bound on one call to the cluster: from
// 3 s to a minute, within Swarm's ~15 s by default.
func callTimeout(setting, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < 3*time.Second || d > time.Minute {
		return 0, fmt.Errorf("%s %q: want a duration from 3s to 1m", setting, s)
	}
	return d, nil
}

// cephKey is the cephx key of a Ceph backend whose settings are prefixed
// with env (RBD, CEPHFS): given inline (key), in a file (keyFile), or in a
// keyring the backend reads itself (then ""); exactly one of them.
// settings names the three in errors. The inline key is taken out of the
// environment: it lives on in a keyring file of mode 0600, and the
// processes the driver starts need not inherit it.
func cephKey(env, settings, key, keyFile, keyring string) (string, error) {
	sources := 0
	for _, s := range []string{key, keyFile, keyring} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return "", fmt.Errorf("%s: give exactly one (%d given)", settings, sources)
	}
	os.Unsetenv(env + "_KEY")
	if keyFile == "" {
		return strings.TrimSpace(key), nil
	}
	flag := "--" + strings.ToLower(env) + "-key-file (" + env + "_KEY_FILE)"
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	k := strings.TrimSpace(string(b))
	if k == "" {
		return "", fmt.Errorf("%s %s is empty", flag, keyFile)
	}
	return k, nil
}
