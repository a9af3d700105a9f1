package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"

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
