//go:build !(ceph && cgo)

package cephfs

// CephSupport reports whether this build can reach Ceph.
const CephSupport = false

// openCluster is where the Ceph build connects; this build cannot.
func openCluster(Config, string, string) (cluster, error) { return nil, ErrNoCeph }
