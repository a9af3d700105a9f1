package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Docker runs the docker CLI against this node, as a user would, and
// returns its standard output and error together.
func (n *Node) Docker(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"-H", "unix://" + n.Socket}, args...)
	env := baseEnv("DOCKER_CONFIG="+n.CLIDir, "DOCKER_HOST=", "DOCKER_CONTEXT=", "DOCKER_CLI_HINTS=false")
	out, err := runCmd(ctx, env, "", DockerCLI, full...)
	if err != nil {
		if ce, ok := err.(*CmdError); ok {
			ce.Cmd = "[" + n.Name + "] docker " + strings.Join(args, " ")
		}
	}
	return out, err
}

// DockerEnv is the environment for running the docker CLI against this
// node by hand (printed in failure reports).
func (n *Node) DockerEnv() string {
	return fmt.Sprintf("DOCKER_HOST=unix://%s DOCKER_CONFIG=%s", n.Socket, n.CLIDir)
}

// Volume is `docker volume inspect` of a cluster volume.
type Volume struct {
	Name          string
	Driver        string
	Scope         string
	Options       map[string]string
	ClusterVolume *ClusterVolume
}

// ClusterVolume is the Swarm part of a volume.
type ClusterVolume struct {
	ID   string
	Spec struct {
		Group      string
		AccessMode struct {
			Scope       string
			Sharing     string
			MountVolume *struct{ FsType string }
			BlockVolume *struct{}
		}
		CapacityRange *struct{ RequiredBytes, LimitBytes int64 }
		Availability  string
	}
	Info *struct {
		CapacityBytes int64
		VolumeContext map[string]string
		VolumeID      string
	}
	PublishStatus []struct {
		NodeID         string
		State          string
		PublishContext map[string]string
	}
}

// Status is what `docker volume ls --cluster` shows.
func (v *Volume) Status() string {
	cv := v.ClusterVolume
	switch {
	case cv == nil:
		return "not a cluster volume"
	case cv.Info == nil || cv.Info.VolumeID == "":
		return "pending creation"
	case len(cv.PublishStatus) > 0:
		return "in use"
	}
	return "created"
}

// VolumeID is the driver's id of the volume, or "".
func (v *Volume) VolumeID() string {
	if v.ClusterVolume == nil || v.ClusterVolume.Info == nil {
		return ""
	}
	return v.ClusterVolume.Info.VolumeID
}

// InspectVolume returns `docker volume inspect NAME` and its raw JSON.
func (n *Node) InspectVolume(ctx context.Context, name string) (*Volume, string, error) {
	out, err := n.Docker(ctx, "volume", "inspect", name)
	if err != nil {
		return nil, out, err
	}
	var vs []Volume
	if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs) != 1 {
		return nil, out, fmt.Errorf("docker volume inspect %s: %v: %s", name, err, out)
	}
	return &vs[0], out, nil
}

// Task is `docker inspect` of a swarm task, the fields the tests use.
type Task struct {
	ID           string
	NodeID       string
	DesiredState string
	Slot         int
	Status       struct {
		State           string
		Message         string
		Err             string
		ContainerStatus *struct {
			ContainerID string
			ExitCode    int
		}
	}
}

// Tasks returns the service's tasks.
func (n *Node) Tasks(ctx context.Context, service string) ([]Task, error) {
	ids, err := n.Docker(ctx, "service", "ps", "-q", "--no-trunc", service)
	if err != nil {
		return nil, err
	}
	args := append([]string{"inspect", "--type", "task"}, strings.Fields(ids)...)
	if len(args) == 3 {
		return nil, nil
	}
	out, err := n.Docker(ctx, args...)
	if err != nil {
		return nil, err
	}
	var ts []Task
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		return nil, fmt.Errorf("docker inspect tasks: %v: %s", err, out)
	}
	return ts, nil
}

// NodeIDs maps swarm node ids to the cluster's nodes.
func (c *Cluster) NodeIDs(ctx context.Context) (map[string]*Node, error) {
	out := map[string]*Node{}
	for _, n := range c.Nodes {
		id, err := n.Docker(ctx, "info", "--format", "{{.Swarm.NodeID}}")
		if err != nil {
			return nil, err
		}
		out[strings.TrimSpace(id)] = n
	}
	return out, nil
}

// SwarmNodeID is this node's id in the swarm.
func (n *Node) SwarmNodeID(ctx context.Context) (string, error) {
	id, err := n.Docker(ctx, "info", "--format", "{{.Swarm.NodeID}}")
	return strings.TrimSpace(id), err
}

// PluginID is the managed plugin's id on this node.
func (n *Node) PluginID(ctx context.Context) (string, error) {
	out, err := n.Docker(ctx, "plugin", "inspect", "--format", "{{.Id}}", PluginName)
	return strings.TrimSpace(out), err
}

// PluginPID finds the plugin's swarm-csi process: the one below the
// containerd shim running the plugin's id.
func (n *Node) PluginPID(ctx context.Context) (int, error) {
	id, err := n.PluginID(ctx)
	if err != nil {
		return 0, err
	}
	ps := ListProcs()
	shims := map[int]bool{}
	for _, p := range ps {
		if strings.Contains(p.Cmdline, "containerd-shim") && strings.Contains(p.Cmdline, id) {
			shims[p.Pid] = true
		}
	}
	for pid, p := range descendants(ps, shims) {
		if !shims[pid] && p.Comm == "swarm-csi" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("%s: no swarm-csi process below the shim of plugin %s", n.Name, id)
}

// PluginMountsRoot is where this node's plugin's propagated mount shows on
// the host: Docker binds <data-root>/plugins/<id>/propagated-mount at the
// plugin's propagatedMount.
func (n *Node) PluginMountsRoot(ctx context.Context) (string, error) {
	id, err := n.PluginID(ctx)
	if err != nil {
		return "", err
	}
	return filepath.Join(n.DataRoot, "plugins", id, "propagated-mount"), nil
}

// Log returns dockerd's log, which holds the plugin's output.
func (n *Node) Log() string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// PluginLog returns the lines of dockerd's log that are the plugin's
// output (dockerd logs them with plugin=<id>).
func (n *Node) PluginLog() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := n.PluginID(ctx)
	var lines []string
	for _, l := range strings.Split(n.Log(), "\n") {
		if (err == nil && strings.Contains(l, "plugin="+id)) || (err != nil && strings.Contains(l, "plugin=")) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// LogSince returns the part of dockerd's log written after offset, and
// the new offset.
func (n *Node) LogSince(offset int64) (string, int64) {
	f, err := os.Open(n.LogPath)
	if err != nil {
		return "", offset
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= offset {
		return "", offset
	}
	b := make([]byte, fi.Size()-offset)
	k, _ := f.ReadAt(b, offset)
	return string(b[:k]), offset + int64(k)
}

// LogSize is the current length of dockerd's log.
func (n *Node) LogSize() int64 {
	fi, err := os.Stat(n.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}
