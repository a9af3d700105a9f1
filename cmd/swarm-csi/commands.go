//go:build !nocli

package main

import (
	"context"
	"io"

	"github.com/swarm-csi/swarm-csi/pkg/ops"
)

// The operator's commands (volume, snapshot, stack, doctor) are package
// ops. A build with the tag nocli leaves them out (nocommands.go), and
// with them the Docker Engine client and the compose loader they use,
// which the driver never runs: the rbd plugin's driver is built so.

type commandOptions = ops.Options

const commandsUsage = ops.Usage

func isCommand(word string) bool { return ops.IsCommand(word) }

func runCommand(ctx context.Context, opts commandOptions, args []string, stdout, stderr io.Writer) int {
	return ops.Main(ctx, opts, args, stdout, stderr)
}
