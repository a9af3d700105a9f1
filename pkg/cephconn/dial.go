//go:build ceph && cgo

package cephconn

import (
	"fmt"

	"github.com/ceph/go-ceph/rados"
)

// Dial connects as client.user, with the keyring file keyring, to the
// cluster of the configuration file conf: within its client_mount_timeout,
// or fails. set, if not nil, sets options of its own before connecting.
//
// The libraries print nothing: the errors say what failed, and librados
// would print the line of a key it cannot parse. An error of connecting
// carries librados's error number (Errno); one of reading or setting the
// configuration carries none.
func Dial(conf, user, keyring string, set func(*rados.Conn) error) (*rados.Conn, error) {
	r, err := rados.NewConnWithUser(user)
	if err != nil {
		return nil, fmt.Errorf("new client.%s: %v", user, err)
	}
	// A handle that never connects is freed by go-ceph's finalizer:
	// rados_shutdown is for connected ones.
	if err := r.ReadConfigFile(conf); err != nil {
		return nil, fmt.Errorf("read %s: %v", conf, err)
	}
	for _, o := range [][2]string{
		{"keyring", keyring},
		{"log_to_stderr", "false"}, {"err_to_stderr", "false"},
		{"log_to_syslog", "false"}, {"err_to_syslog", "false"},
	} {
		if err := r.SetConfigOption(o[0], o[1]); err != nil {
			return nil, fmt.Errorf("option %s: %v", o[0], err)
		}
	}
	if set != nil {
		if err := set(r); err != nil {
			return nil, fmt.Errorf("options: %v", err)
		}
	}
	if err := r.Connect(); err != nil {
		return nil, err
	}
	return r, nil
}
