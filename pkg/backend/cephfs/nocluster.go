//go:build !(ceph && cgo)

package cephfs

import "errors"

// ErrNoCeph is what New answers in a build without librados and libcephfs.
var ErrNoCeph = errors.New("this swarm-csi is built without Ceph support: " +
	"install the Ceph flavour of the plugin (deploy/build-plugin --with rbd) " +
	"or build with cgo and -tags ceph,pacific")

// CephSupport reports whether this build can reach Ceph.
const CephSupport = false

// openCluster is where the Ceph build connects; this build cannot.
func openCluster(Config, string, string) (cluster, error) { return nil, ErrNoCeph }
