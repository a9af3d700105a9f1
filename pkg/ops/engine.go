package ops

import (
	"context"

	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"

	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// Engine is what the commands ask of the Docker Engine API, on a manager.
type Engine interface {
	// Inspect returns the volume named name, or nil if there is none;
	// Create creates a cluster volume (stack volumes).
	stackvol.Engine
	// Volumes lists the volumes of a driver.
	Volumes(ctx context.Context, driver string) ([]volume.Volume, error)
	// Plugin is docker plugin inspect NAME.
	Plugin(ctx context.Context, name string) (*plugin.Plugin, error)
	// Node is docker node inspect ID.
	Node(ctx context.Context, id string) (swarm.Node, error)
	// ThisNode is the Swarm node id of the Engine itself.
	ThisNode(ctx context.Context) (string, error)
	// Nodes is docker node ls: every node of the swarm.
	Nodes(ctx context.Context) ([]swarm.Node, error)
	// Services is docker service ls: every service of the swarm.
	Services(ctx context.Context) ([]swarm.Service, error)
	// Remove is docker volume rm [--force] NAME.
	Remove(ctx context.Context, name string, force bool) error
	Close() error
}
