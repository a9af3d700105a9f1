package ops

import (
	"context"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
	"github.com/moby/moby/client"

	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// docker is Engine on the Docker Engine API.
type docker struct{ c *client.Client }

// DockerFromEnv is the Docker Engine that DOCKER_HOST names (default the
// local socket), as the docker command finds it.
func DockerFromEnv() (Engine, error) {
	c, err := client.New(client.FromEnv)
	if err != nil {
		return nil, err
	}
	return docker{c}, nil
}

func (d docker) Inspect(ctx context.Context, name string) (*volume.Volume, error) {
	r, err := d.c.VolumeInspect(ctx, name, client.VolumeInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r.Volume, nil
}

func (d docker) Create(ctx context.Context, v stackvol.Volume) error {
	spec := v.Spec
	_, err := d.c.VolumeCreate(ctx, client.VolumeCreateOptions{
		Name: v.Name, Driver: v.Driver, DriverOpts: v.DriverOpts, Labels: v.Labels, ClusterVolumeSpec: &spec,
	})
	return err
}

func (d docker) Volumes(ctx context.Context, driver string) ([]volume.Volume, error) {
	r, err := d.c.VolumeList(ctx, client.VolumeListOptions{Filters: make(client.Filters).Add("driver", driver)})
	if err != nil {
		return nil, err
	}
	return r.Items, nil
}

func (d docker) Plugin(ctx context.Context, name string) (*plugin.Plugin, error) {
	r, err := d.c.PluginInspect(ctx, name, client.PluginInspectOptions{})
	if err != nil {
		return nil, err
	}
	return &r.Plugin, nil
}

func (d docker) Node(ctx context.Context, id string) (swarm.Node, error) {
	r, err := d.c.NodeInspect(ctx, id, client.NodeInspectOptions{})
	return r.Node, err
}

func (d docker) ThisNode(ctx context.Context) (string, error) {
	r, err := d.c.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", err
	}
	return r.Info.Swarm.NodeID, nil
}

func (d docker) Nodes(ctx context.Context) ([]swarm.Node, error) {
	r, err := d.c.NodeList(ctx, client.NodeListOptions{})
	return r.Items, err
}

func (d docker) Services(ctx context.Context) ([]swarm.Service, error) {
	r, err := d.c.ServiceList(ctx, client.ServiceListOptions{})
	return r.Items, err
}

func (d docker) Remove(ctx context.Context, name string, force bool) error {
	_, err := d.c.VolumeRemove(ctx, name, client.VolumeRemoveOptions{Force: force})
	return err
}

func (d docker) Close() error { return d.c.Close() }
