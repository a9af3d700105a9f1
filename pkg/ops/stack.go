package ops

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// stack runs `stack volumes -c FILE --namespace STACK` (args after
// "stack"): it creates the cluster volumes the compose file declares, so
// that `docker stack deploy -c FILE STACK` finds them. It returns the exit
// status.
func (c *CLI) stack(ctx context.Context, args []string) int {
	usage := func() {
		fmt.Fprintln(c.Stderr, "usage: swarm-csi stack volumes -c COMPOSE-FILE --namespace STACK")
	}
	if len(args) == 0 || args[0] != "volumes" {
		usage()
		return 2
	}
	if c.Options != (Options{}) {
		fmt.Fprintln(c.Stderr, "swarm-csi stack volumes: --plugin, --socket and --format are options of the volume, snapshot and doctor commands")
		usage()
		return 2
	}
	fs := flag.NewFlagSet("swarm-csi stack volumes", flag.ContinueOnError)
	fs.SetOutput(c.Stderr)
	file := fs.String("c", "", "compose file (as for docker stack deploy -c)")
	fs.StringVar(file, "compose-file", "", "compose file")
	ns := fs.String("namespace", "", "the stack's name, as given to docker stack deploy")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *file == "" || *ns == "" || fs.NArg() > 0 {
		usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(c.Stderr, "swarm-csi stack volumes:", err)
		return 1
	}
	vols, skipped, err := stackvol.Load(ctx, *file, *ns)
	if err != nil {
		return fail(err)
	}
	for _, k := range skipped {
		fmt.Fprintf(c.Stdout, "skipped  %s (no %s, or external: not a volume to create)\n", k, stackvol.ExtensionKey)
	}
	engine, err := c.Engine()
	if err != nil {
		return fail(err)
	}
	defer engine.Close()
	res, err := stackvol.Apply(ctx, engine, vols)
	for _, r := range res {
		fmt.Fprintf(c.Stdout, "%-8s %s\n", r.Action, r.Name)
	}
	if err != nil {
		return fail(err)
	}
	return 0
}
