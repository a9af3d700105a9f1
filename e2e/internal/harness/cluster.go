package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options shape a cluster.
type Options struct {
	// Nodes is the number of nodes: 1 is a lone manager, more are a
	// manager and workers in their own network namespaces joined through
	// a bridge in a "switch" namespace.
	Nodes int
	// PluginEnv are extra `docker plugin set` values, e.g. LOG_LEVEL=debug.
	PluginEnv []string
	// DockerdLogLevel is dockerd's --log-level (default info).
	DockerdLogLevel string
	// Flavour is the plugin flavour: "" (plain) or "rbd"
	// (deploy/build-plugin --with rbd).
	Flavour string
	// Backend is the plugin's backend, for the tests' checks: "" (loop)
	// or "rbd". Setup's settings select it.
	Backend string
	// Setup runs once the nodes' network namespaces exist and before any
	// dockerd starts, e.g. to start a storage cluster a plugin reaches
	// from them. It returns more `docker plugin set` values.
	Setup func(ctx context.Context, c *Cluster) ([]string, error)
}

// Subnet is where the multi-node swarm's addresses live; they exist only
// inside the network namespaces the harness creates.
const subnetPrefix = "10.231.0."

// Cluster is a running swarm.
type Cluster struct {
	ID      string
	Root    string // files: data-roots, logs, the plugins' data directory
	runBase string // exec-roots: short paths, for unix socket lengths
	// DataDir is the host directory every node's plugin uses as its data
	// directory (data.source): the shared filesystem.
	DataDir string
	Nodes   []*Node
	Tools   *Tools
	Plugin  *PluginConfig
	Backend string // Options.Backend

	logf    Logf
	rec     *Record
	mu      sync.Mutex
	stopped bool
}

// Node is one dockerd.
type Node struct {
	Name     string // node1, node2, ... (also its hostname)
	NetNS    string // ip netns name
	Addr     string // advertise address
	DataRoot string
	ExecRoot string
	Socket   string
	PidFile  string
	LogPath  string
	CLIDir   string // DOCKER_CONFIG for the docker CLI

	c    *Cluster
	proc Proc
	wait chan error
	args []string
}

// Start prepares the tools and brings up a swarm. The returned cluster
// must be stopped with Stop; if this process dies first, its reaper
// cleans up.
func Start(ctx context.Context, logf Logf, opts Options) (c *Cluster, err error) {
	if opts.Nodes < 1 {
		opts.Nodes = 1
	}
	if opts.DockerdLogLevel == "" {
		opts.DockerdLogLevel = "info"
	}
	if err := CleanStale(logf); err != nil {
		logf("cleaning up earlier runs: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	rec, err := newRecord(id)
	if err != nil {
		return nil, err
	}
	c = &Cluster{ID: id, logf: logf, rec: rec, Backend: opts.Backend}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				logf("stopping the half-started cluster: %v", serr)
			}
			c = nil
		}
	}()
	if err := rec.startReaper(); err != nil {
		return c, fmt.Errorf("start the reaper: %w", err)
	}
	c.Root = filepath.Join(os.TempDir(), "swarm-csi-e2e-"+id)
	c.runBase = "/run/sce-" + id
	rec.Roots = []string{c.Root, c.runBase}
	if err := rec.save(); err != nil {
		return c, err
	}
	for _, d := range []string{c.Root, c.runBase} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return c, err
		}
	}
	c.Tools, err = Prepare(ctx, logf, c.Root, opts.Flavour)
	if err != nil {
		return c, err
	}
	if c.Plugin, err = ReadPluginConfig(c.Tools.PluginDir); err != nil {
		return c, err
	}
	c.DataDir = filepath.Join(c.Root, "plugin-data")
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return c, err
	}
	rec.DataDirs = []string{c.DataDir}
	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("node%d", i), c: c}
		n.NetNS = fmt.Sprintf("sce2e-%s-n%d", id, i)
		dir := filepath.Join(c.Root, n.Name)
		n.DataRoot = filepath.Join(dir, "data-root")
		n.LogPath = filepath.Join(dir, "dockerd.log")
		n.CLIDir = filepath.Join(dir, "cli")
		n.ExecRoot = filepath.Join(c.runBase, fmt.Sprint(i))
		n.Socket = filepath.Join(dir, "docker.sock")
		n.PidFile = filepath.Join(dir, "docker.pid")
		for _, d := range []string{dir, n.DataRoot, n.CLIDir, n.ExecRoot} {
			if err := os.MkdirAll(d, 0o711); err != nil {
				return c, err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, n)
		rec.NetNS = append(rec.NetNS, n.NetNS)
		rec.Sockets = append(rec.Sockets, n.Socket)
	}
	if opts.Nodes > 1 {
		rec.NetNS = append(rec.NetNS, fmt.Sprintf("sce2e-%s-sw", id))
	}
	if err := rec.save(); err != nil {
		return c, err
	}
	if err := c.setupNetwork(ctx); err != nil {
		return c, err
	}
	if opts.Setup != nil {
		env, err := opts.Setup(ctx, c)
		if err != nil {
			return c, fmt.Errorf("setup: %w", err)
		}
		opts.PluginEnv = append(slices.Clone(opts.PluginEnv), env...)
	}
	// Daemons start in parallel; the plugin is installed and enabled on
	// each before it joins the swarm (a plugin installed after the join
	// delays the first publish by about 20 s: docs/swarm.md, "The plugin
	// name needs its tag").
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.bringUp(ctx, opts)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	start := time.Now()
	m := c.Nodes[0]
	if _, err := m.Docker(ctx, "swarm", "init", "--advertise-addr", m.Addr); err != nil {
		return c, err
	}
	if len(c.Nodes) > 1 {
		token, err := m.Docker(ctx, "swarm", "join-token", "-q", "worker")
		if err != nil {
			return c, err
		}
		for _, n := range c.Nodes[1:] {
			if _, err := n.Docker(ctx, "swarm", "join", "--token", strings.TrimSpace(token), m.Addr+":2377"); err != nil {
				return c, err
			}
		}
		if err := c.waitNodesReady(ctx); err != nil {
			return c, err
		}
	}
	logf("swarm of %d node(s) formed in %s", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	return c, nil
}

// setupNetwork creates one network namespace per node. With several nodes
// each gets a veth to a bridge in a "switch" namespace of its own, so
// nothing changes on the host (its FORWARD policy may drop bridged
// traffic) and nothing leaves the namespaces.
func (c *Cluster) setupNetwork(ctx context.Context) error {
	ip := func(args ...string) error {
		_, err := runCmd(ctx, nil, "", "ip", args...)
		return err
	}
	for _, n := range c.Nodes {
		if err := ip("netns", "add", n.NetNS); err != nil {
			return err
		}
		if err := ip("-n", n.NetNS, "link", "set", "lo", "up"); err != nil {
			return err
		}
		n.Addr = "127.0.0.1"
	}
	if len(c.Nodes) == 1 {
		return nil
	}
	sw := c.rec.NetNS[len(c.rec.NetNS)-1]
	if err := ip("netns", "add", sw); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", "br0", "type", "bridge"},
		{"-n", sw, "link", "set", "br0", "up"},
	}
	for i, n := range c.Nodes {
		port := fmt.Sprintf("p%d", i+1)
		n.Addr = fmt.Sprintf("%s%d", subnetPrefix, 11+i)
		steps = append(steps,
			// Both ends are created inside namespaces: no host interface.
			[]string{"-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n.NetNS},
			[]string{"-n", sw, "link", "set", port, "master", "br0"},
			[]string{"-n", sw, "link", "set", port, "up"},
			[]string{"-n", n.NetNS, "addr", "add", n.Addr + "/24", "dev", "eth0"},
			[]string{"-n", n.NetNS, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// bringUp starts the node's dockerd, installs and enables the plugin and
// imports the busybox image.
func (n *Node) bringUp(ctx context.Context, opts Options) error {
	n.args = []string{
		"--data-root", n.DataRoot,
		"--exec-root", n.ExecRoot,
		"-H", "unix://" + n.Socket,
		"--pidfile", n.PidFile,
		"--config-file", filepath.Join(filepath.Dir(n.DataRoot), "daemon.json"),
		"--userland-proxy=false",
		"--log-level", opts.DockerdLogLevel,
	}
	if err := n.startDaemon(ctx); err != nil {
		return err
	}
	if _, err := n.Docker(ctx, "plugin", "create", PluginName, n.c.Tools.PluginDir); err != nil {
		return err
	}
	set := []string{"plugin", "set", PluginName, "data.source=" + n.c.DataDir}
	set = append(set, opts.PluginEnv...)
	if _, err := n.Docker(ctx, set...); err != nil {
		return err
	}
	if _, err := n.Docker(ctx, "plugin", "enable", PluginName); err != nil {
		return fmt.Errorf("%w\nplugin log:\n%s", err, n.PluginLog())
	}
	if _, err := n.Docker(ctx, "import", n.c.Tools.BusyboxTar, BusyboxImage); err != nil {
		return err
	}
	return nil
}

// startDaemon starts dockerd in the node's network namespace with its own
// hostname: nsenter --net (not `ip netns exec`, which mounts a fresh /sys
// and hides the cgroup v1 mounts) and unshare --uts. The daemons share the
// host's mount namespace, so the plugins' mounts are visible from here.
func (n *Node) startDaemon(ctx context.Context) error {
	logFile, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := append([]string{"--net=/run/netns/" + n.NetNS, "unshare", "--uts", "sh", "-c",
		`hostname "$0"; exec "$@"`, n.Name, n.c.Tools.Dockerd}, n.args...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = []string{
		"PATH=" + n.c.Tools.RuncDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		// Use the imported image as it is: without this the agent tries a
		// registry for every task (and fails: the namespaces have no route
		// out), as moby's own integration tests do.
		"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1",
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own session: a ^C to `go test` must not kill the daemons
	// half-way; the reaper or Stop stops them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	// nsenter, unshare and sh exec each other: this pid is dockerd's.
	p, err := procOf(cmd.Process.Pid)
	if err != nil {
		return err
	}
	n.proc = p
	n.c.mu.Lock()
	n.c.rec.Daemons = append(n.c.rec.Daemons, p)
	err = n.c.rec.save()
	n.c.mu.Unlock()
	if err != nil {
		return err
	}
	n.wait = make(chan error, 1)
	go func() { n.wait <- cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-n.wait:
			n.wait <- err
			return fmt.Errorf("%s: dockerd exited: %v\n%s", n.Name, err, tail(n.LogPath, 40))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := n.Docker(cctx, "version", "--format", "{{.Server.Version}}")
		cancel()
		if err == nil {
			n.c.logf("%s: dockerd ready in %s (pid %d, netns %s)", n.Name, time.Since(start).Round(time.Millisecond), p.Pid, n.NetNS)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: dockerd not ready after 90s: %v\n%s", n.Name, err, tail(n.LogPath, 40))
		}
	}
}

// StopDaemon stops the node's dockerd with SIGTERM (SIGKILL after 60 s).
func (n *Node) StopDaemon() error {
	if n.wait == nil {
		return nil
	}
	syscall.Kill(n.proc.Pid, syscall.SIGTERM)
	select {
	case err := <-n.wait:
		n.wait = nil
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		return nil
	case <-time.After(60 * time.Second):
		syscall.Kill(n.proc.Pid, syscall.SIGKILL)
		<-n.wait
		n.wait = nil
		return fmt.Errorf("%s: dockerd ignored SIGTERM for 60s", n.Name)
	}
}

// KillDaemon kills the node's dockerd with SIGKILL, as a crash would. What
// it started in its own sessions goes on running: the containerd shims,
// and below them the plugin, its attach processes and the containers.
// Stop cleans them up.
func (n *Node) KillDaemon() error {
	if n.wait == nil {
		return fmt.Errorf("%s: dockerd is not running", n.Name)
	}
	if err := syscall.Kill(n.proc.Pid, syscall.SIGKILL); err != nil {
		return err
	}
	<-n.wait
	n.wait = nil
	return nil
}

// RestartDaemon stops and starts the node's dockerd with the same flags.
func (n *Node) RestartDaemon(ctx context.Context) error {
	if err := n.StopDaemon(); err != nil {
		return err
	}
	return n.startDaemon(ctx)
}

func (c *Cluster) waitNodesReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := c.Nodes[0].Docker(ctx, "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}}")
		if err == nil && strings.Count(out, " Ready Active") == len(c.Nodes) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes not ready after 60s: %v\n%s", err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Manager is the node the swarm was initialised on.
func (c *Cluster) Manager() *Node { return c.Nodes[0] }

// Stop tears everything down and checks that nothing is left; an error
// names what is.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	for _, n := range c.Nodes {
		n.closeWait()
	}
	err := cleanup(c.rec, c.logf)
	if err == nil {
		c.rec.release()
	} else {
		// Leave the record for the next run's CleanStale.
		if c.rec.lock != nil {
			c.rec.lock.Close()
		}
	}
	return err
}

func (n *Node) closeWait() {
	// cleanup signals the daemons itself; reap them so they are not
	// zombies holding their pid while it waits.
	if n.wait == nil {
		return
	}
	w := n.wait
	go func() { <-w }()
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
