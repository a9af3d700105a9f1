package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// recorder is a testing.TB whose Skip and Fatalf are recorded; like the
// real ones, they end the goroutine.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skip(args ...any) {
	r.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a recorder in a goroutine of its own.
func run(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestRequire(t *testing.T) {
	for _, c := range []struct {
		ci, why       string
		skip, failure string
	}{
		{ci: "", why: "needs root", skip: "needs root"},
		{ci: "false", why: "needs root", skip: "needs root"},
		{ci: "true", why: "needs root", failure: "needs root, and CI=true: this test must run in CI"},
		{ci: " TRUE", why: "needs mkfs.xfs", failure: "needs mkfs.xfs, and CI=true: this test must run in CI"},
		{ci: "1", why: "needs root", failure: "needs root, and CI=true: this test must run in CI"},
		{ci: "true", why: ""},
		{ci: "", why: ""},
	} {
		t.Setenv("CI", c.ci)
		r := run(t, func(tb testing.TB) { Require(tb, c.why) })
		if r.skipped != c.skip || r.failed != c.failure {
			t.Errorf("CI=%q, why %q: skipped %q, failed %q; want skipped %q, failed %q", c.ci, c.why, r.skipped, r.failed, c.skip, c.failure)
		}
	}
}

func TestMissingTools(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "present"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if got := MissingTools("present"); got != "" {
		t.Errorf(`MissingTools("present") = %q, want ""`, got)
	}
	if got := MissingTools("present", "absent", "also-absent"); got != "needs absent" {
		t.Errorf(`MissingTools("present", "absent", ...) = %q, want "needs absent"`, got)
	}
	if got := MissingTools(); got != "" {
		t.Errorf(`MissingTools() = %q, want ""`, got)
	}
}

func TestMissingRoot(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	want := "needs no-such-tool"
	if os.Geteuid() != 0 {
		want = "needs root"
	} else if _, err := os.Stat("/dev/loop-control"); err != nil {
		want = "needs /dev/loop-control"
	}
	if got := MissingRoot("no-such-tool"); got != want {
		t.Errorf("MissingRoot(no-such-tool) = %q, want %q", got, want)
	}
	t.Setenv("CI", "")
	r := run(t, func(tb testing.TB) { RequireRoot(tb, "no-such-tool") })
	if r.skipped != want || r.failed != "" {
		t.Errorf("RequireRoot: skipped %q, failed %q; want skipped %q", r.skipped, r.failed, want)
	}
}
