//go:build !(ceph && cgo)

package sanity

// driverTags are the build tags of the driver under test: none, as for
// this test binary.
const driverTags = ""
