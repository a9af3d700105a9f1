package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/volume"
	"github.com/moby/moby/client"

	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// stackMain runs `swarm-csi stack volumes -c FILE --namespace STACK`: it
// creates the cluster volumes the compose file declares, so that `docker
// stack deploy -c FILE STACK` finds them. It talks to the Docker Engine
// named by DOCKER_HOST (default: the local socket), a manager. It returns
// the exit status: 0 done, 1 failed, 2 bad usage.
func stackMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "usage: swarm-csi stack volumes -c COMPOSE-FILE --namespace STACK")
	}
	if len(args) == 0 || args[0] != "volumes" {
		usage()
		return 2
	}
	fs := flag.NewFlagSet("swarm-csi stack volumes", flag.ContinueOnError)
	fs.SetOutput(stderr)
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
	vols, skipped, err := stackvol.Load(ctx, *file, *ns)
	if err != nil {
		fmt.Fprintln(stderr, "swarm-csi stack volumes:", err)
		return 1
	}
	for _, k := range skipped {
		fmt.Fprintf(stdout, "skipped  %s (no %s, or external: not a volume to create)\n", k, stackvol.ExtensionKey)
	}
	c, err := client.New(client.FromEnv)
	if err != nil {
		fmt.Fprintln(stderr, "swarm-csi stack volumes:", err)
		return 1
	}
	defer c.Close()
	res, err := stackvol.Apply(ctx, engine{c}, vols)
	for _, r := range res {
		fmt.Fprintf(stdout, "%-8s %s\n", r.Action, r.Name)
	}
	if err != nil {
		fmt.Fprintln(stderr, "swarm-csi stack volumes:", err)
		return 1
	}
	return 0
}

// engine is stackvol.Engine on the Docker Engine API.
type engine struct{ c *client.Client }

func (e engine) Inspect(ctx context.Context, name string) (*volume.Volume, error) {
	r, err := e.c.VolumeInspect(ctx, name, client.VolumeInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r.Volume, nil
}

func (e engine) Create(ctx context.Context, v stackvol.Volume) error {
	spec := v.Spec
	_, err := e.c.VolumeCreate(ctx, client.VolumeCreateOptions{
		Name: v.Name, Driver: v.Driver, DriverOpts: v.DriverOpts, Labels: v.Labels, ClusterVolumeSpec: &spec,
	})
	return err
}
