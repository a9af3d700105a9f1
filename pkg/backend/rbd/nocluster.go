//go:build !(ceph && cgo)

package rbd

import "errors"

// ErrNoCeph is what New answers in a build without librados and librbd.
var ErrNoCeph = errors.New("this swarm-csi is built without Ceph support: " +
	"install the rbd flavour of the plugin (swarm-csi:rbd, deploy/build-plugin --with rbd) " +
	"or build with cgo and -tags ceph,pacific")

// CephSupport reports whether this build can reach Ceph.
const CephSupport = false

// openCluster is where the Ceph build connects; this build cannot.
func openCluster(Config, string) (cluster, error) { return nil, ErrNoCeph }
