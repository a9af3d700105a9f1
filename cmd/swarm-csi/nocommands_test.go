//go:build nocli

package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

// Without the commands, a command word still ends the driver's flags, and
// running it says where the commands are.
func TestNoCommands(t *testing.T) {
	c, err := parseConfig([]string{"volume", "ls"}, envOf(map[string]string{"NODE_ID": "a/b"}), io.Discard)
	if err != nil || !slices.Equal(c.command, []string{"volume", "ls"}) {
		t.Fatalf("volume ls: %+v, %v; want the command", c, err)
	}
	var stderr strings.Builder
	if code := runCommand(context.Background(), c.ops, c.command, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "not in this build") || !strings.Contains(stderr.String(), "go build ./cmd/swarm-csi") {
		t.Errorf("volume ls: exit %d, %q; want 2 and where the commands are", code, stderr.String())
	}
	if _, err := parseConfig([]string{"--format", "json", "volume", "ls"}, envOf(nil), io.Discard); err == nil {
		t.Errorf("--format json volume ls: no error; this build has no --format")
	}
	var out strings.Builder
	if _, err := parseConfig([]string{"--help"}, envOf(nil), &out); !errors.Is(err, flag.ErrHelp) ||
		!strings.Contains(out.String(), "  -endpoint string\n") || !strings.Contains(out.String(), noCommands) {
		t.Errorf("--help: %v, want the driver's flags and where the commands are:\n%s", err, &out)
	}
}
