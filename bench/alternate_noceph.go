//go:build !(ceph && cgo)

package main

import (
	"context"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// fillIndex needs librados: this build has none.
func fillIndex(context.Context, *cephtest.Cluster, string, map[string]string) error {
	return rbd.ErrNoCeph
}
