// Package ops holds the operator's commands of the swarm-csi binary: what
// Swarm cannot do with a volume (grow it, snapshot it, see how full it
// is), on the volume names Swarm knows, and the cluster volumes of a
// compose file. They find a volume's id through the Docker Engine API
// (DOCKER_HOST, a manager) and the plugin's socket from docker plugin
// inspect.
package ops

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Usage describes the commands.
const Usage = `usage: swarm-csi [options] COMMAND
  volume ls                     the plugin's volumes beside Swarm's; orphans marked
  volume inspect NAME           one volume: id, size, nodes, condition
  volume expand NAME SIZE       grow a volume (e.g. 20G); in use, it grows online
  volume stats NAME             capacity, used, free (bytes and inodes) and condition
                                on every node it is published on (other nodes
                                through their plugin's METRICS_ADDR)
  volume rm-orphan ID           delete a disk no Swarm volume refers to
  volume release NAME           a volume Swarm counts as published to nodes whose
                                plugins hold nothing of it, or to nodes removed
                                from the swarm (docker node rm): free it (README,
                                "When something is stuck"); the next publish
                                fences the clients a removed node left (rbd)
  snapshot create VOLUME NAME   snapshot a volume
  snapshot ls [VOLUME]          list snapshots
  snapshot rm NAME              delete a snapshot
  stack volumes -c FILE --namespace STACK
                                create the cluster volumes a compose file declares
  doctor                        what is wrong with the plugin and its volumes on
                                this swarm, each with its fix; exit 1 if anything
options (before a volume, snapshot or doctor COMMAND):
  --plugin NAME      the plugin (default swarm-csi:latest)
  --socket PATH      the plugin's CSI socket, instead of finding it
  --format table|json
Exit status: 0 done, 1 failed (nothing changed unless it says so), 2 bad usage.`

// IsCommand tells whether word is the first word of a command.
func IsCommand(word string) bool {
	return slices.Contains([]string{"volume", "snapshot", "stack", "doctor"}, word)
}

// Options come before a command; the zero value is the default of each.
type Options struct {
	Plugin string // the plugin's name; "" is swarm-csi:latest
	Socket string // its CSI socket; "" finds it with docker plugin inspect
	Format string // "table" (or "") or "json"
}

// Flags registers the options on fs.
func (o *Options) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.Plugin, "plugin", "", "the plugin the commands work with (default swarm-csi:latest)")
	fs.StringVar(&o.Socket, "socket", "", "the plugin's CSI socket, instead of finding it with docker plugin inspect")
	fs.StringVar(&o.Format, "format", "", "table (default) or json")
}

// PluginsDir is where Docker on Linux keeps its plugins' sockets, whatever
// its --exec-root (moby daemon/daemon_linux.go getPluginExecRoot).
const PluginsDir = "/run/docker/plugins"

// CLI runs the commands.
type CLI struct {
	Options
	Stdout, Stderr io.Writer
	// Engine connects to the Docker Engine API.
	Engine func() (Engine, error)
	// PluginsDir holds the plugins' sockets: DIR/<plugin id>/<socket>.
	PluginsDir string
}

// Main runs the command args with the Docker Engine of DOCKER_HOST; it
// returns the exit status.
func Main(ctx context.Context, opts Options, args []string, stdout, stderr io.Writer) int {
	c := &CLI{Options: opts, Stdout: stdout, Stderr: stderr, Engine: DockerFromEnv, PluginsDir: PluginsDir}
	return c.Run(ctx, args)
}

// errUsage makes the exit status 2.
var errUsage = errors.New("usage")

// Run runs the command args and returns its exit status: 0 done, 1
// failed, 2 bad usage.
func (c *CLI) Run(ctx context.Context, args []string) int {
	if len(args) > 0 && args[0] == "stack" {
		return c.stack(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "doctor" {
		return c.doctor(ctx, args[1:])
	}
	err := c.run(ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		if err != errUsage {
			fmt.Fprintln(c.Stderr, "swarm-csi:", err)
		}
		fmt.Fprintln(c.Stderr, Usage)
		return 2
	default:
		fmt.Fprintln(c.Stderr, "swarm-csi:", err)
		return 1
	}
}

// op is a volume or snapshot command under way.
type op struct {
	plugin string
	json   bool
	out    io.Writer
	engine Engine
	conn   grpc.ClientConnInterface // the plugin's socket
	ctrl   csi.ControllerClient
	node   csi.NodeClient

	installed *plugin.Plugin // from docker plugin inspect, once asked
}

func (c *CLI) run(ctx context.Context, args []string) error {
	if len(args) < 2 {
		return errUsage
	}
	want := map[string]int{"volume ls": 0, "volume inspect": 1, "volume expand": 2, "volume stats": 1,
		"volume rm-orphan": 1, "volume release": 1, "snapshot create": 2, "snapshot ls": -1, "snapshot rm": 1}
	cmd := args[0] + " " + args[1]
	n, ok := want[cmd]
	rest := args[2:]
	if !ok || (n >= 0 && len(rest) != n) || (n < 0 && len(rest) > 1) {
		return fmt.Errorf("%w: %s", errUsage, strings.Join(args, " "))
	}
	if c.Format != "" && c.Format != "table" && c.Format != "json" {
		return fmt.Errorf("%w: --format %q: want table or json", errUsage, c.Format)
	}
	engine, err := c.Engine()
	if err != nil {
		return err
	}
	defer engine.Close()
	o := &op{plugin: cmp.Or(c.Plugin, "swarm-csi:latest"), json: c.Format == "json", out: c.Stdout, engine: engine}
	conn, err := o.connect(ctx, c.Socket, c.PluginsDir)
	if err != nil {
		return err
	}
	defer conn.Close()
	switch cmd {
	case "volume ls":
		return o.volumeLs(ctx)
	case "volume inspect":
		return o.volumeInspect(ctx, rest[0])
	case "volume expand":
		return o.volumeExpand(ctx, rest[0], rest[1])
	case "volume stats":
		return o.volumeStats(ctx, rest[0])
	case "volume rm-orphan":
		return o.volumeRmOrphan(ctx, rest[0])
	case "volume release":
		return o.volumeRelease(ctx, rest[0])
	case "snapshot create":
		return o.snapshotCreate(ctx, rest[0], rest[1])
	case "snapshot ls":
		return o.snapshotLs(ctx, rest)
	default:
		return o.snapshotRm(ctx, rest[0])
	}
}

// connect dials the plugin's socket: socket, or the one docker plugin
// inspect names under pluginsDir.
func (o *op) connect(ctx context.Context, socket, pluginsDir string) (*grpc.ClientConn, error) {
	if socket == "" {
		p, err := o.pluginInspect(ctx)
		if err != nil {
			return nil, err
		}
		if !p.Enabled {
			return nil, fmt.Errorf("plugin %s is disabled: docker plugin enable %s", o.plugin, o.plugin)
		}
		socket = filepath.Join(pluginsDir, p.ID, p.Config.Interface.Socket)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	o.conn, o.ctrl, o.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return conn, nil
}

// pluginInspect is docker plugin inspect of the plugin, asked once.
func (o *op) pluginInspect(ctx context.Context) (*plugin.Plugin, error) {
	if o.installed == nil {
		p, err := o.engine.Plugin(ctx, o.plugin)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", o.plugin, err)
		}
		o.installed = p
	}
	return o.installed, nil
}
