package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/swarm-csi/swarm-csi/pkg/backend/dir"
)

type dirSettings struct{ onDelete, allowLocal string }

func init() {
	registerBackend("dir", func(fs *flag.FlagSet, env func(string, string) string) opener {
		s := &dirSettings{}
		fs.StringVar(&s.onDelete, "dir-on-delete", env("DIR_ON_DELETE", string(dir.Retain)), "dir: what removing a volume does with its directory: retain (moved under dir/retained in the data directory) or delete (env DIR_ON_DELETE)")
		fs.StringVar(&s.allowLocal, "dir-allow-local", env("DIR_ALLOW_LOCAL", "false"), "dir: accept a data directory on the root filesystem, a deliberately local one (env DIR_ALLOW_LOCAL)")
		return s.open
	})
}

func (s *dirSettings) open(_ context.Context, c *config) (*openedBackend, error) {
	onDelete, err := dir.ParseOnDelete(s.onDelete)
	if err != nil {
		return nil, fmt.Errorf("--dir-on-delete (DIR_ON_DELETE) %w", err)
	}
	allowLocal, err := strconv.ParseBool(s.allowLocal)
	if err != nil {
		return nil, fmt.Errorf("--dir-allow-local (DIR_ALLOW_LOCAL) %q: want true or false", s.allowLocal)
	}
	be, err := dir.New(dir.Options{DataDir: c.dataDir, OnDelete: onDelete, AllowLocal: allowLocal})
	if err != nil {
		return nil, err
	}
	return &openedBackend{controller: be, node: be.ForNode(), topology: be.Topology(), stateDir: be.NodeStateDir()}, nil
}
