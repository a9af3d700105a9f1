// Command swarm-csi is the swarm-csi CSI driver: Identity, Controller and
// Node services on one unix socket; with a command (volume, snapshot,
// stack, doctor) it runs the operator's commands of package ops instead
// (commands.go; built with the tag nocli, it has none). This file is
// wiring only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/identity"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
	"github.com/swarm-csi/swarm-csi/pkg/node"
	"github.com/swarm-csi/swarm-csi/pkg/server"
)

// version is set with -ldflags "-X main.version=..."; otherwise it comes
// from the module's build information.
var version = ""

type config struct {
	endpoint, dataDir, nodeID, driverName, backend, logLevel string
	maxVolumesPerNode                                        int64
	growInterval                                             time.Duration
	metricsAddr                                              string
	showVersion                                              bool
	// open opens the chosen backend.
	open opener
	// log is the driver's logger, for backends that log what they do in
	// the background; set before open is called.
	log *slog.Logger

	// command, if set, is an operator command (volume ..., snapshot ...,
	// stack ...) to run with its options instead of the driver.
	command []string
	ops     commandOptions
}

// driverNamePattern is the CSI spec's rule for plugin names.
var driverNamePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$`)

// parseConfig reads the command line: the driver's flags, each falling
// back to an environment variable, since Docker plugin settings arrive as
// env (docker plugin set); or an operator command with its options.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("swarm-csi", flag.ContinueOnError)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	host, _ := os.Hostname()
	fs.StringVar(&c.endpoint, "endpoint", env("CSI_ENDPOINT", "unix:///run/swarm-csi/csi.sock"), "CSI socket: unix:///path or /path (env CSI_ENDPOINT)")
	fs.StringVar(&c.dataDir, "data-dir", env("DATA_DIR", "/var/lib/swarm-csi"), "directory for volumes and state (env DATA_DIR)")
	fs.StringVar(&c.nodeID, "node-id", env("NODE_ID", host), "this node's id (env NODE_ID; default the hostname)")
	fs.StringVar(&c.driverName, "driver-name", env("DRIVER_NAME", "swarm-csi"), "CSI driver name (env DRIVER_NAME)")
	fs.StringVar(&c.backend, "backend", env("BACKEND", "loop"), "storage backend: "+backendNames()+" (env BACKEND)")
	fs.StringVar(&c.logLevel, "log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	maxVols := env("MAX_VOLUMES_PER_NODE", "128")
	fs.StringVar(&maxVols, "max-volumes-per-node", maxVols, "most volumes published to one node (env MAX_VOLUMES_PER_NODE)")
	grow := env("GROW_INTERVAL", "30s")
	fs.StringVar(&grow, "grow-interval", grow, "how often the node looks for volumes in use that have grown, and grows them online; 0 never (env GROW_INTERVAL)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", env("METRICS_ADDR", ""), "serve Prometheus metrics at http://ADDR/metrics, e.g. :9464 (env METRICS_ADDR; default off)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	openers := configureBackends(fs, env)
	var err error
	if c.command, err = parseArgs(fs, &c.ops, args, stderr); err != nil {
		return nil, err
	}
	if c.command != nil || c.showVersion {
		return c, nil
	}
	n, err := strconv.ParseInt(maxVols, 10, 64)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("--max-volumes-per-node (MAX_VOLUMES_PER_NODE) %q: want a whole number of at least 1", maxVols)
	}
	c.maxVolumesPerNode = n
	if c.growInterval, err = time.ParseDuration(grow); err != nil || (c.growInterval != 0 && c.growInterval < time.Second) {
		return nil, fmt.Errorf("--grow-interval (GROW_INTERVAL) %q: want 0 or a duration of at least 1s, such as 30s", grow)
	}
	if _, err := server.SocketPath(c.endpoint); err != nil {
		return nil, fmt.Errorf("--endpoint (CSI_ENDPOINT): %w", err)
	}
	if !filepath.IsAbs(c.dataDir) {
		return nil, fmt.Errorf("--data-dir (DATA_DIR) %q: want an absolute path", c.dataDir)
	}
	if !backend.ValidNodeID(c.nodeID) {
		return nil, fmt.Errorf("--node-id (NODE_ID) %q: use letters, digits, '.', '_' and '-', at most 128", c.nodeID)
	}
	if !driverNamePattern.MatchString(c.driverName) {
		return nil, fmt.Errorf("--driver-name (DRIVER_NAME) %q: at most 63 letters, digits, '-' and '.', starting and ending with a letter or digit", c.driverName)
	}
	if c.open = openers[c.backend]; c.open == nil {
		return nil, unknownBackend(c.backend)
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		return nil, err
	}
	return c, nil
}

// parseArgs parses args, the driver's flags or the commands' options
// (into opts) followed by a command. It returns the command, the first
// argument that is not a flag, or nil to run the driver.
func parseArgs(driver *flag.FlagSet, opts *commandOptions, args []string, stderr io.Writer) ([]string, error) {
	opsFlags := flag.NewFlagSet("", flag.ContinueOnError)
	opts.Flags(opsFlags)
	fs := flag.NewFlagSet("swarm-csi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: swarm-csi [options]\n  serve the CSI driver on a unix socket\noptions:")
		driver.SetOutput(stderr)
		driver.PrintDefaults()
		fmt.Fprintln(stderr, "\n"+commandsUsage)
	}
	for _, set := range []*flag.FlagSet{driver, opsFlags} {
		set.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	command := fs.Args()
	if len(command) > 0 && !isCommand(command[0]) {
		return nil, fmt.Errorf("unexpected argument %q: the commands are volume, snapshot, stack and doctor", command[0])
	}
	var misplaced error
	fs.Visit(func(f *flag.Flag) {
		switch isOps := opsFlags.Lookup(f.Name) != nil; {
		case len(command) > 0 && !isOps:
			misplaced = fmt.Errorf("--%s is an option of the driver, not of %s", f.Name, command[0])
		case len(command) == 0 && isOps:
			misplaced = fmt.Errorf("--%s is an option of the volume, snapshot and doctor commands (swarm-csi --%s ... volume ...)", f.Name, f.Name)
		}
	})
	if misplaced != nil || len(command) == 0 {
		return nil, misplaced
	}
	return command, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("--log-level (LOG_LEVEL) %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "+" + s.Value[:12]
			}
		}
		return v
	}
	return "unknown"
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "swarm-csi:", err)
		os.Exit(2)
	}
	if cfg.command != nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		code := runCommand(ctx, cfg.ops, cfg.command, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if cfg.showVersion {
		fmt.Println("swarm-csi", versionString())
		return
	}
	level, _ := parseLevel(cfg.logLevel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// k8s.io/mount-utils logs through klog: send it to the same handler,
	// so --log-level applies to it too.
	klog.SetSlogLogger(log.With("source", "mount-utils"))
	if err := run(cfg, log); err != nil {
		log.Error("swarm-csi stopped", "error", err)
		os.Exit(1)
	}
}

func run(cfg *config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cfg.log = log
	be, err := cfg.open(ctx, cfg)
	if err != nil {
		return err
	}
	nodeID := cfg.nodeID
	if be.nodeID != "" {
		if !backend.ValidNodeID(be.nodeID) {
			return fmt.Errorf("the %s backend gave node id %q, which cannot name a state directory", cfg.backend, be.nodeID)
		}
		nodeID = be.nodeID
	}
	// The storage's own per-node limit caps --max-volumes-per-node.
	maxPerNode := cfg.maxVolumesPerNode
	if m := be.controller.Info().MaxVolumesPerNode; m > 0 {
		maxPerNode = min(maxPerNode, m)
	}
	stateDir := filepath.Join(cfg.dataDir, "node-state")
	if be.stateDir != "" {
		stateDir = be.stateDir
	}
	nodeSrv, err := node.New(ctx, be.node, node.WithMetrics(node.NewMounter()), node.Config{
		NodeID:            nodeID,
		MaxVolumesPerNode: maxPerNode,
		StateDir:          filepath.Join(stateDir, nodeID),
		Topology:          be.topology,
		Log:               log,
	})
	if err != nil {
		return err
	}
	ctrl := controller.New(be.controller, maxPerNode)
	srv := server.New(log, server.Services{
		Identity:        identity.New(cfg.driverName, versionString(), ctrl.PluginCapabilities()...),
		Controller:      ctrl,
		GroupController: ctrl,
		Node:            nodeSrv,
	})
	controller.RegisterDiagnostics(srv, ctrl) // swarm-csi doctor reads the last CreateVolume errors
	var metricsDone <-chan error
	if cfg.metricsAddr != "" {
		metrics.Registry.MustRegister(&metrics.VolumeCollector{Counts: ctrl.VolumeCounts, Usage: nodeSrv.VolumeUsage},
			metrics.SettingsCollector(cfg.backend, cfg.driverName, versionString(), be.topology))
		addr, done, err := metrics.Serve(ctx, cfg.metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr (METRICS_ADDR): %w", err)
		}
		metricsDone = done
		log.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	sock, _ := server.SocketPath(cfg.endpoint)
	lis, err := server.Listen(sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	log.Info("serving", "endpoint", sock, "backend", cfg.backend, "data-dir", cfg.dataDir, "node-id", nodeID,
		"driver", cfg.driverName, "version", versionString())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	// Mounts lost while volumes stayed in use (a plugin disable/enable)
	// come back in the background: the socket must answer at once.
	go func() { _ = nodeSrv.Restore(ctx) }()
	if cfg.growInterval > 0 {
		go nodeSrv.WatchGrowth(ctx, cfg.growInterval)
	}
	// Shared filesystems whose client dies (a killed ceph-fuse) are
	// mounted again.
	go nodeSrv.WatchMounts(ctx, node.MountCheckInterval)
	select {
	case err := <-errc:
		return err
	case err := <-metricsDone:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
	}
	// Attached volumes stay attached: containers keep using them, and the
	// next process finds them again by their loop device tags and mounts.
	log.Info("shutting down")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	return nil
}
