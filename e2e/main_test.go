// Package e2e runs swarm-csi as a Docker managed plugin under a real Swarm
// on this machine: one single-node swarm shared by the scenarios that need
// one node, and a three-node swarm (three daemons in their own network
// namespaces) for the move between nodes. See e2e/README.md.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
	"github.com/swarm-csi/swarm-csi/internal/testenv"
)

var (
	skipReason string
	single     struct {
		once  sync.Once
		c     *harness.Cluster
		err   error
		setup time.Duration
	}
	suiteStart time.Time
)

func TestMain(m *testing.M) {
	// In the reaper copy of this binary, clean up after the run and exit.
	harness.ReaperMain()
	flag.Parse()
	suiteStart = time.Now()
	skipReason = harness.SkipReason()
	code := m.Run()
	if single.c != nil {
		start := time.Now()
		if err := single.c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown of the single-node swarm left something behind:\n%v\n", err)
			code = 1
		} else {
			logf("single-node swarm torn down in %s; nothing left behind", time.Since(start).Round(time.Millisecond))
		}
	}
	if skipReason == "" {
		logf("e2e suite took %s", time.Since(suiteStart).Round(time.Second))
	}
	os.Exit(code)
}

// logf reports the harness's progress on stderr, which `go test -v` shows
// as it happens.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s e2e: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// requireSwarm skips a test on a machine that cannot run the suite, or
// fails it under CI=true, where nothing may be skipped.
func requireSwarm(t *testing.T) {
	t.Helper()
	testenv.Require(t, skipReason)
}

// singleNode returns the shared single-node swarm, starting it (and
// building what it needs) the first time.
func singleNode(t *testing.T) *harness.Cluster {
	t.Helper()
	requireSwarm(t)
	single.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		start := time.Now()
		// Metrics on the node's 127.0.0.1, which TestOperatorCLI scrapes.
		single.c, single.err = harness.Start(ctx, logf, harness.Options{Nodes: 1, PluginEnv: []string{"METRICS_ADDR=" + metricsAddr}})
		single.setup = time.Since(start)
		if single.err == nil {
			logf("single-node swarm up in %s", single.setup.Round(time.Millisecond))
		}
	})
	if single.err != nil {
		t.Fatalf("bring up the single-node swarm: %v", single.err)
	}
	return single.c
}
