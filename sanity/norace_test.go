//go:build !race

package sanity

// raceEnabled reports whether this test binary was built with -race; the
// driver binary under test is then built with -race as well.
const raceEnabled = false
