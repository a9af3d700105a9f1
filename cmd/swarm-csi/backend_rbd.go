package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd"
)

// rbdFlags are the rbd backend's settings: each flag falls back to an
// environment variable (docker plugin set). The key itself has no flag,
// so that it never shows in the driver's command line: it comes from
// RBD_KEY, a file (RBD_KEY_FILE) or a keyring (RBD_KEYRING), or per
// request as the CSI secret userKey.
type rbdFlags struct {
	monitors, pool, user, keyring, keyFile, features, dataPool, attach, prefix, timeout string
	key                                                                                 string
}

// rbdSettings names each setting's flag and variable, for error messages.
var rbdSettings = map[string]string{
	"monitors":       "--rbd-monitors (RBD_MONITORS)",
	"pool":           "--rbd-pool (RBD_POOL)",
	"user":           "--rbd-user (RBD_USER)",
	"keyring":        "--rbd-keyring (RBD_KEYRING)",
	"key":            "RBD_KEY, --rbd-key-file (RBD_KEY_FILE) or --rbd-keyring (RBD_KEYRING)",
	"image-features": "--rbd-image-features (RBD_IMAGE_FEATURES)",
	"data-pool":      "--rbd-data-pool (RBD_DATA_POOL)",
	"prefix":         "--rbd-prefix (RBD_PREFIX)",
	"state-dir":      "--data-dir (DATA_DIR)",
}

func init() {
	registerBackend("rbd", func(fs *flag.FlagSet, env func(string, string) string) opener {
		f := &rbdFlags{}
		fs.StringVar(&f.monitors, "rbd-monitors", env("RBD_MONITORS", ""), "rbd: Ceph monitor addresses, comma-separated (env RBD_MONITORS)")
		fs.StringVar(&f.pool, "rbd-pool", env("RBD_POOL", "rbd"), "rbd: default pool; it also holds the driver's records (env RBD_POOL)")
		fs.StringVar(&f.user, "rbd-user", env("RBD_USER", "admin"), "rbd: cephx user, without client. (env RBD_USER)")
		fs.StringVar(&f.keyring, "rbd-keyring", env("RBD_KEYRING", ""), "rbd: keyring file with the user's key (env RBD_KEYRING)")
		fs.StringVar(&f.keyFile, "rbd-key-file", env("RBD_KEY_FILE", ""), "rbd: file holding the user's bare key (env RBD_KEY_FILE; or the key itself in RBD_KEY)")
		fs.StringVar(&f.features, "rbd-image-features", env("RBD_IMAGE_FEATURES", ""), "rbd: features of new images, e.g. layering,exclusive-lock (env RBD_IMAGE_FEATURES; default Ceph's)")
		fs.StringVar(&f.dataPool, "rbd-data-pool", env("RBD_DATA_POOL", ""), "rbd: pool for the images' data, e.g. erasure-coded (env RBD_DATA_POOL)")
		fs.StringVar(&f.attach, "rbd-attach", env("RBD_ATTACH", rbd.ModeKRBD), "rbd: how nodes attach images: "+strings.Join(rbd.Modes, ", ")+" (env RBD_ATTACH)")
		fs.StringVar(&f.prefix, "rbd-prefix", env("RBD_PREFIX", "swarm-csi"), "rbd: image name prefix, unique to this swarm (env RBD_PREFIX)")
		fs.StringVar(&f.timeout, "rbd-timeout", env("RBD_TIMEOUT", rbd.DefaultCallTimeout.String()), "rbd: time allowed to each rbd or ceph command (env RBD_TIMEOUT)")
		f.key = env("RBD_KEY", "")
		return f.open
	})
}

func (f *rbdFlags) open(_ context.Context, c *config) (*openedBackend, error) {
	cfg, err := f.config(c)
	if err != nil {
		return nil, err
	}
	be, err := rbd.New(cfg)
	if err != nil {
		return nil, settingError(err, rbdSettings)
	}
	node, err := be.ForNode(c.nodeID, f.attach)
	if err != nil {
		return nil, err
	}
	return &openedBackend{controller: be, node: node, topology: be.Topology()}, nil
}

// config turns the settings into the backend's configuration, checking
// what the backend cannot: the attach mode, the timeout, and that the key
// comes from one place.
func (f *rbdFlags) config(c *config) (rbd.Config, error) {
	cfg := rbd.Config{
		Monitors: f.monitors, Pool: f.pool, User: f.user, Keyring: f.keyring,
		ImageFeatures: f.features, DataPool: f.dataPool, Prefix: f.prefix,
		StateDir: filepath.Join(c.dataDir, "rbd"), Log: c.log,
	}
	if !validMode(f.attach) {
		return cfg, fmt.Errorf("--rbd-attach (RBD_ATTACH) %q: want one of %s", f.attach, strings.Join(rbd.Modes, ", "))
	}
	var err error
	if cfg.CallTimeout, err = callTimeout("--rbd-timeout (RBD_TIMEOUT)", f.timeout); err != nil {
		return cfg, err
	}
	// The processes the driver starts (rbd, rbd-fuse) need not inherit the key.
	cfg.Key, err = cephKey("RBD", rbdSettings["key"], f.key, f.keyFile, f.keyring)
	return cfg, err
}

func validMode(m string) bool {
	for _, x := range rbd.Modes {
		if m == x {
			return true
		}
	}
	return false
}
