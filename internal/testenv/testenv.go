// Package testenv decides what a test does when the machine lacks something
// it needs (root, loop devices, a tool, a Ceph cluster): it skips with the
// reason, except in CI (CI=true), where every test must run and a missing
// prerequisite is a failure.
package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// CI reports whether the tests run in CI: CI is "true" (or "1").
func CI() bool {
	v := strings.TrimSpace(os.Getenv("CI"))
	return strings.EqualFold(v, "true") || v == "1"
}

// Require ends t when why, what keeps it from running, is not empty: it
// skips t, or fails it with CI=true.
func Require(t testing.TB, why string) {
	t.Helper()
	if why == "" {
		return
	}
	if CI() {
		t.Fatalf("%s, and CI=true: this test must run in CI", why)
	}
	t.Skip(why)
}

// RequireRoot is Require for the tests that attach real loop devices and
// run tools: root, /dev/loop-control and each of tools on PATH.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	Require(t, MissingRoot(tools...))
}

// MissingRoot says what keeps this process from attaching loop devices and
// running tools: "needs root", "needs /dev/loop-control" or "needs <tool>";
// "" when nothing does.
func MissingRoot(tools ...string) string {
	if os.Geteuid() != 0 {
		return "needs root"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "needs /dev/loop-control"
	}
	return MissingTools(tools...)
}

// MissingTools returns "needs <tool>" for the first of tools that is not on
// PATH, or "".
func MissingTools(tools ...string) string {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return "needs " + tool
		}
	}
	return ""
}
