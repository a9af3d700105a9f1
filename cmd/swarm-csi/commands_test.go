//go:build !nocli

package main

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/ops"
)

// The first argument that is not a flag chooses an operator command over
// the driver; the driver's settings are not read then.
func TestParseConfigCommand(t *testing.T) {
	bad := envOf(map[string]string{"NODE_ID": "a/b", "LOG_LEVEL": "loud"})
	for _, tc := range []struct {
		args    []string
		command []string
		opts    ops.Options
	}{
		{[]string{"volume", "ls"}, []string{"volume", "ls"}, ops.Options{}},
		{[]string{"--format", "json", "--plugin=p:1", "--socket", "/s.sock", "volume", "inspect", "--x"},
			[]string{"volume", "inspect", "--x"}, ops.Options{Plugin: "p:1", Socket: "/s.sock", Format: "json"}},
		{[]string{"snapshot"}, []string{"snapshot"}, ops.Options{}},
		{[]string{"--format", "json", "doctor"}, []string{"doctor"}, ops.Options{Format: "json"}},
		{[]string{"stack", "volumes", "-c", "f.yml", "--namespace", "st"}, []string{"stack", "volumes", "-c", "f.yml", "--namespace", "st"}, ops.Options{}},
	} {
		c, err := parseConfig(tc.args, bad, io.Discard)
		if err != nil || !slices.Equal(c.command, tc.command) || c.ops != tc.opts {
			t.Errorf("%q: %+v, %v; want command %q with %+v", tc.args, c, err, tc.command, tc.opts)
		}
	}
	for args, want := range map[string]string{
		"--backend=loop volume ls": "--backend is an option of the driver, not of volume",
		"--format json":            "--format is an option of the volume, snapshot and doctor commands",
		"--socket=/s.sock":         "--socket is an option of the volume, snapshot and doctor commands",
		"--version snapshot ls":    "--version is an option of the driver",
		"volumes ls":               `unexpected argument "volumes"`,
	} {
		if _, err := parseConfig(strings.Fields(args), bad, io.Discard); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", args, err, want)
		}
	}
	c, err := parseConfig(nil, envOf(map[string]string{"NODE_ID": "n1"}), io.Discard)
	if err != nil || c.command != nil {
		t.Errorf("no command: %+v, %v; want the driver", c, err)
	}
}

// --help shows the driver's flags and the commands.
func TestHelp(t *testing.T) {
	var out strings.Builder
	if _, err := parseConfig([]string{"--help"}, envOf(nil), &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"  -endpoint string\n", "  -rbd-pool string\n", "  volume expand NAME SIZE ", "  snapshot create VOLUME NAME ",
		"  stack volumes -c FILE --namespace STACK\n", "  doctor ", "  volume release NAME ", "  --format table|json\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, &out)
		}
	}
}
