//go:build ceph && cgo

package sanity

// driverTags are the build tags of the driver under test: the Ceph build,
// as this test binary is.
const driverTags = "ceph,pacific"
