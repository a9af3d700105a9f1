package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/go-units"

	"github.com/swarm-csi/swarm-csi/pkg/backend/cephfs"
)

// cephfsFlags are the cephfs backend's settings, each a flag with an
// environment fallback (docker plugin set). As for rbd, the key has no
// flag: it comes from CEPHFS_KEY, a file (CEPHFS_KEY_FILE) or a keyring
// (CEPHFS_KEYRING).
type cephfsFlags struct {
	monitors, user, keyring, keyFile, fsName, group, client, quota, timeout, cloneWait string
	key                                                                                string
}

// cephfsSettings names each setting's flag and variable, for error messages.
var cephfsSettings = map[string]string{
	"monitors":      "--cephfs-monitors (CEPHFS_MONITORS)",
	"user":          "--cephfs-user (CEPHFS_USER)",
	"key":           "CEPHFS_KEY, --cephfs-key-file (CEPHFS_KEY_FILE) or --cephfs-keyring (CEPHFS_KEYRING)",
	"fs-name":       "--cephfs-fs (CEPHFS_FS)",
	"group":         "--cephfs-group (CEPHFS_GROUP)",
	"client":        "--cephfs-client (CEPHFS_CLIENT)",
	"default-quota": "--cephfs-default-quota (CEPHFS_DEFAULT_QUOTA)",
	"state-dir":     "--data-dir (DATA_DIR)",
}

func init() {
	registerBackend("cephfs", func(fs *flag.FlagSet, env func(string, string) string) opener {
		f := &cephfsFlags{}
		fs.StringVar(&f.monitors, "cephfs-monitors", env("CEPHFS_MONITORS", ""), "cephfs: Ceph monitor addresses, comma-separated (env CEPHFS_MONITORS)")
		fs.StringVar(&f.user, "cephfs-user", env("CEPHFS_USER", "admin"), "cephfs: cephx user, without client. (env CEPHFS_USER)")
		fs.StringVar(&f.keyring, "cephfs-keyring", env("CEPHFS_KEYRING", ""), "cephfs: keyring file with the user's key (env CEPHFS_KEYRING)")
		fs.StringVar(&f.keyFile, "cephfs-key-file", env("CEPHFS_KEY_FILE", ""), "cephfs: file holding the user's bare key (env CEPHFS_KEY_FILE; or the key itself in CEPHFS_KEY)")
		fs.StringVar(&f.fsName, "cephfs-fs", env("CEPHFS_FS", "cephfs"), "cephfs: the file system (ceph fs ls) (env CEPHFS_FS)")
		fs.StringVar(&f.group, "cephfs-group", env("CEPHFS_GROUP", cephfs.DefaultGroup), "cephfs: subvolume group of this swarm's volumes (env CEPHFS_GROUP)")
		fs.StringVar(&f.client, "cephfs-client", env("CEPHFS_CLIENT", cephfs.ClientAuto), "cephfs: how nodes mount: "+strings.Join(cephfs.Clients, ", ")+" (auto: the kernel's client where the host has one, else ceph-fuse) (env CEPHFS_CLIENT)")
		fs.StringVar(&f.quota, "cephfs-default-quota", env("CEPHFS_DEFAULT_QUOTA", "1GiB"), "cephfs: quota of a volume created without --limit-bytes or --required-bytes (env CEPHFS_DEFAULT_QUOTA)")
		fs.StringVar(&f.timeout, "cephfs-timeout", env("CEPHFS_TIMEOUT", cephfs.DefaultCallTimeout.String()), "cephfs: time allowed to each call to Ceph (env CEPHFS_TIMEOUT)")
		fs.StringVar(&f.cloneWait, "cephfs-clone-wait", env("CEPHFS_CLONE_WAIT", cephfs.DefaultCloneWait.String()), "cephfs: how long CreateVolume from a snapshot or volume waits for the clone before answering Aborted, for the caller to retry (env CEPHFS_CLONE_WAIT)")
		f.key = env("CEPHFS_KEY", "")
		return f.open
	})
}

func (f *cephfsFlags) open(_ context.Context, c *config) (*openedBackend, error) {
	cfg, err := f.config(c)
	if err != nil {
		return nil, err
	}
	be, err := cephfs.New(cfg)
	if err != nil {
		return nil, settingError(err, cephfsSettings)
	}
	node, err := be.ForNode(c.nodeID)
	if err != nil {
		return nil, err
	}
	return &openedBackend{controller: be, node: node, topology: be.Topology()}, nil
}

// config turns the settings into the backend's configuration, checking what
// the backend cannot: the quota's and durations' syntax, and that the key
// comes from one place.
func (f *cephfsFlags) config(c *config) (cephfs.Config, error) {
	cfg := cephfs.Config{Monitors: f.monitors, User: f.user, Keyring: f.keyring, FsName: f.fsName,
		Group: f.group, Client: f.client, StateDir: filepath.Join(c.dataDir, "cephfs"), Log: c.log}
	q, err := units.RAMInBytes(f.quota)
	if err != nil || q <= 0 {
		return cfg, fmt.Errorf("%s %q: want a size such as 1GiB or 512M", cephfsSettings["default-quota"], f.quota)
	}
	cfg.DefaultQuota = q
	if cfg.CallTimeout, err = callTimeout("--cephfs-timeout (CEPHFS_TIMEOUT)", f.timeout); err != nil {
		return cfg, err
	}
	// Swarm allows an RPC about 15 s; a client that does not retry an
	// Aborted answer needs the clone's whole time.
	if cfg.CloneWait, err = time.ParseDuration(f.cloneWait); err != nil || cfg.CloneWait < time.Second || cfg.CloneWait > 10*time.Minute {
		return cfg, fmt.Errorf("--cephfs-clone-wait (CEPHFS_CLONE_WAIT) %q: want a duration from 1s to 10m", f.cloneWait)
	}
	// ceph-fuse need not inherit the key.
	cfg.Key, err = cephKey("CEPHFS", cephfsSettings["key"], f.key, f.keyFile, f.keyring)
	return cfg, err
}
