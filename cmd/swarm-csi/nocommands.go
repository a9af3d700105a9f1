//go:build nocli

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
)

// This build (tag nocli, the rbd plugin's driver) serves the driver only:
// the operator's commands, package ops, are left out with the Docker
// Engine client and the compose loader they use. Asked for one, it says
// which binary has them.

type commandOptions struct{}

func (*commandOptions) Flags(*flag.FlagSet) {}

const noCommands = "the operator's commands (volume, snapshot, stack, doctor) are not in this build of swarm-csi " +
	"(-tags nocli, as the rbd plugin's driver is built): run them with the static build, go build ./cmd/swarm-csi, " +
	"or the plain plugin's /swarm-csi"

const commandsUsage = "commands: " + noCommands

func isCommand(word string) bool {
	return slices.Contains([]string{"volume", "snapshot", "stack", "doctor"}, word)
}

func runCommand(_ context.Context, _ commandOptions, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "swarm-csi:", noCommands)
	return 2
}
