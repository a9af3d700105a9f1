//go:build ceph && cgo

package main

import (
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// TestQuickRunAlternateRBD runs --store --alternate with rbd on a
// throwaway Ceph cluster, the store's records written straight into the
// index, 250 of them, 5 attached to other nodes (and the nodes' counts
// made from them at the first publish).
func TestQuickRunAlternateRBD(t *testing.T) {
	requireSystem(t)
	testenv.Require(t, cephtest.Missing())
	cfg := defaultConfig()
	cfg.Backend = "rbd"
	n := 250
	cfg.Store, cfg.Alternate = &n, true
	cfg.alternateDefaults(nil, true)
	rep := quickRun(t, cfg)
	checkAlternate(t, rep, n, 1, "index")
	rep.print(t.Output())
}
