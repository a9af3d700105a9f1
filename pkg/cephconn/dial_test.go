//go:build ceph && cgo

package cephconn

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
)

// deadCluster writes a configuration whose monitor nobody answers for,
// with a client_mount_timeout of 2 s, and a keyring for client.test.
func deadCluster(t *testing.T) (conf, keyring string) {
	t.Helper()
	dir := t.TempDir()
	conf, keyring = filepath.Join(dir, "ceph.conf"), filepath.Join(dir, "keyring")
	files := map[string]string{
		conf:    "[global]\nmon host = 127.0.0.1:9\nclient mount timeout = 2\nadmin socket =\nlog file =\nlog to stderr = true\nerr to stderr = true\n",
		keyring: "[client.test]\n\tkey = AQBVdkJpAAAAABAAtfQEGcq5JXH5xZ4Pu5ABCQ==\n",
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return conf, keyring
}

func TestDialSilencesTheLibrariesAndTimesOut(t *testing.T) {
	conf, keyring := deadCluster(t)
	seen := map[string]string{}
	start := time.Now()
	_, err := Dial(conf, "test", keyring, func(r *rados.Conn) error {
		for _, o := range []string{"keyring", "log_to_stderr", "err_to_stderr", "log_to_syslog", "err_to_syslog", "client_mount_timeout"} {
			v, err := r.GetConfigOption(o)
			if err != nil {
				return err
			}
			seen[o] = v
		}
		return nil
	})
	took := time.Since(start)
	want := map[string]string{"keyring": keyring, "log_to_stderr": "false", "err_to_stderr": "false",
		"log_to_syslog": "false", "err_to_syslog": "false", "client_mount_timeout": "2"}
	for o, v := range want {
		if seen[o] != v {
			t.Errorf("%s = %q before connecting, want %q", o, seen[o], v)
		}
	}
	if Errno(err) != syscall.ETIMEDOUT {
		t.Errorf("no monitor: %v (errno %d), want ETIMEDOUT", err, Errno(err))
	}
	t.Logf("no monitor: %v after %v", err, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("took %v with a client_mount_timeout of 2 s", took)
	}
}

func TestDialConfigurationErrorsCarryNoErrno(t *testing.T) {
	conf, keyring := deadCluster(t)
	missing := filepath.Join(t.TempDir(), "none.conf")
	_, err := Dial(missing, "test", keyring, nil)
	if err == nil || Errno(err) != 0 || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing configuration: %v (errno %d), want an error naming it, without errno", err, Errno(err))
	}
	called := false
	_, err = Dial(conf, "test", keyring, func(r *rados.Conn) error {
		called = true
		return r.SetConfigOption("no_such_option", "1")
	})
	if !called || err == nil || Errno(err) != 0 {
		t.Errorf("an option refused: %v (errno %d), want an error without errno", err, Errno(err))
	}
	_, err = Dial(conf, "test", keyring, func(*rados.Conn) error { return errors.New("refused") })
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("set's error: %v", err)
	}
}
