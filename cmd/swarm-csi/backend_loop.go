package main

import (
	"context"
	"flag"

	"github.com/swarm-csi/swarm-csi/pkg/backend/loop"
)

func init() {
	registerBackend("loop", func(*flag.FlagSet, func(string, string) string) opener {
		return func(_ context.Context, c *config) (*openedBackend, error) {
			be, err := loop.New(c.dataDir)
			if err != nil {
				return nil, err
			}
			return &openedBackend{controller: be, node: be.ForNode(c.nodeID), topology: be.Topology()}, nil
		}
	})
}
