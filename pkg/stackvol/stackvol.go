// Package stackvol creates the cluster volumes a compose file declares,
// which `docker stack deploy` mounts but never creates (it ignores the
// volumes' x-cluster-spec, moby #49257).
//
// The compose file is read by compose-go, the parser of Docker Compose;
// x-cluster-spec has the shape the docker CLI parses (docker/cli
// cli/compose/types: group, access_mode, accessibility_requirements,
// capacity_range, secrets, availability). A volume gets the name Swarm
// will look up: its `name:`, or <stack>_<key>.
package stackvol

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/docker/go-units"
	"github.com/moby/moby/api/types/volume"
)

// ExtensionKey is the compose extension holding a cluster volume's spec.
const ExtensionKey = "x-cluster-spec"

// NamespaceLabel is the label `docker stack deploy` puts on what it makes.
const NamespaceLabel = "com.docker.stack.namespace"

// Volume is a cluster volume a compose file declares.
type Volume struct {
	Key        string // its key under the top-level volumes:
	Name       string // the name Swarm looks it up by
	Driver     string
	DriverOpts map[string]string
	Labels     map[string]string
	Spec       volume.ClusterVolumeSpec
}

// Load reads the compose file and returns the cluster volumes it declares
// (those with an x-cluster-spec), sorted by name, and the keys of the
// others (external or local volumes, which are not this tool's business).
func Load(ctx context.Context, file, namespace string) (vols []Volume, skipped []string, err error) {
	if namespace == "" {
		return nil, nil, fmt.Errorf("a stack name (--namespace) is required")
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, nil, err
	}
	opts, err := cli.NewProjectOptions([]string{abs}, cli.WithName(namespace), cli.WithOsEnv,
		cli.WithWorkingDirectory(filepath.Dir(abs)))
	if err != nil {
		return nil, nil, err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	for key, vc := range project.Volumes {
		raw, ok := vc.Extensions[ExtensionKey]
		if !ok || bool(vc.External) {
			skipped = append(skipped, key)
			continue
		}
		spec, err := parseSpec(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: %s: %w", key, ExtensionKey, err)
		}
		if vc.Driver == "" {
			return nil, nil, fmt.Errorf("volume %s: a cluster volume needs driver: (the plugin, e.g. swarm-csi:latest)", key)
		}
		labels := map[string]string{NamespaceLabel: namespace}
		maps.Copy(labels, vc.Labels)
		vols = append(vols, Volume{Key: key, Name: vc.Name, Driver: vc.Driver,
			DriverOpts: map[string]string(vc.DriverOpts), Labels: labels, Spec: spec})
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].Name < vols[j].Name })
	sort.Strings(skipped)
	return vols, skipped, nil
}

// composeSpec is x-cluster-spec as written in a compose file.
type composeSpec struct {
	Group      string `json:"group"`
	AccessMode *struct {
		Scope       string `json:"scope"`
		Sharing     string `json:"sharing"`
		MountVolume *struct {
			FsType     string   `json:"fs_type"`
			MountFlags []string `json:"mount_flags"`
		} `json:"mount_volume"`
		BlockVolume *struct{} `json:"block_volume"`
	} `json:"access_mode"`
	AccessibilityRequirements *struct {
		Requisite []composeTopology `json:"requisite"`
		Preferred []composeTopology `json:"preferred"`
	} `json:"accessibility_requirements"`
	CapacityRange *struct {
		RequiredBytes unitBytes `json:"required_bytes"`
		LimitBytes    unitBytes `json:"limit_bytes"`
	} `json:"capacity_range"`
	Secrets []struct {
		Key    string `json:"key"`
		Secret string `json:"secret"`
	} `json:"secrets"`
	Availability string `json:"availability"`
}

// composeTopology's segments are a mapping or a list of key=value.
type composeTopology struct {
	Segments any `json:"segments"`
}

// unitBytes is a size: a number of bytes or a string such as 1G (binary
// units, as the docker CLI reads them).
type unitBytes int64

func (u *unitBytes) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		*u = unitBytes(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a size is a number or a string such as 10G: %s", b)
	}
	n, err := units.RAMInBytes(s)
	if err != nil {
		return fmt.Errorf("size %q: %w", s, err)
	}
	*u = unitBytes(n)
	return nil
}

var (
	scopes       = []string{string(volume.ScopeSingleNode), string(volume.ScopeMultiNode)}
	sharings     = []string{string(volume.SharingNone), string(volume.SharingReadOnly), string(volume.SharingOneWriter), string(volume.SharingAll)}
	availability = []string{string(volume.AvailabilityActive), string(volume.AvailabilityPause), string(volume.AvailabilityDrain)}
)

// parseSpec converts x-cluster-spec to the Engine API's form, with the
// defaults `docker volume create` applies: scope single, sharing none,
// a block volume unless mount_volume is given, availability active.
func parseSpec(raw any) (volume.ClusterVolumeSpec, error) {
	var out volume.ClusterVolumeSpec
	b, err := json.Marshal(raw)
	if err != nil {
		return out, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var c composeSpec
	if err := dec.Decode(&c); err != nil {
		return out, err
	}
	out.Group = c.Group
	am := &volume.AccessMode{Scope: volume.ScopeSingleNode, Sharing: volume.SharingNone}
	if c.AccessMode != nil {
		if c.AccessMode.Scope != "" {
			am.Scope = volume.Scope(c.AccessMode.Scope)
		}
		if c.AccessMode.Sharing != "" {
			am.Sharing = volume.SharingMode(c.AccessMode.Sharing)
		}
		if mv := c.AccessMode.MountVolume; mv != nil {
			am.MountVolume = &volume.TypeMount{FsType: mv.FsType, MountFlags: mv.MountFlags}
		}
		if c.AccessMode.BlockVolume != nil {
			if am.MountVolume != nil {
				return out, fmt.Errorf("access_mode has both mount_volume and block_volume")
			}
			am.BlockVolume = &volume.TypeBlock{}
		}
	}
	if am.MountVolume == nil && am.BlockVolume == nil {
		am.BlockVolume = &volume.TypeBlock{} // the CLI's default type
	}
	if !slices.Contains(scopes, string(am.Scope)) {
		return out, fmt.Errorf("access_mode.scope %q: want one of %s", am.Scope, strings.Join(scopes, ", "))
	}
	if !slices.Contains(sharings, string(am.Sharing)) {
		return out, fmt.Errorf("access_mode.sharing %q: want one of %s", am.Sharing, strings.Join(sharings, ", "))
	}
	out.AccessMode = am
	if r := c.AccessibilityRequirements; r != nil {
		out.AccessibilityRequirements = &volume.TopologyRequirement{}
		for _, t := range r.Requisite {
			seg, err := segments(t.Segments)
			if err != nil {
				return out, err
			}
			out.AccessibilityRequirements.Requisite = append(out.AccessibilityRequirements.Requisite, volume.Topology{Segments: seg})
		}
		for _, t := range r.Preferred {
			seg, err := segments(t.Segments)
			if err != nil {
				return out, err
			}
			out.AccessibilityRequirements.Preferred = append(out.AccessibilityRequirements.Preferred, volume.Topology{Segments: seg})
		}
	}
	if cr := c.CapacityRange; cr != nil {
		if cr.RequiredBytes < 0 || cr.LimitBytes < 0 || (cr.LimitBytes > 0 && cr.LimitBytes < cr.RequiredBytes) {
			return out, fmt.Errorf("capacity_range: required_bytes %d and limit_bytes %d: want 0 <= required <= limit", cr.RequiredBytes, cr.LimitBytes)
		}
		out.CapacityRange = &volume.CapacityRange{RequiredBytes: int64(cr.RequiredBytes), LimitBytes: int64(cr.LimitBytes)}
	}
	for _, s := range c.Secrets {
		if s.Key == "" || s.Secret == "" {
			return out, fmt.Errorf("secrets: each needs key and secret")
		}
		out.Secrets = append(out.Secrets, volume.Secret{Key: s.Key, Secret: s.Secret})
	}
	out.Availability = volume.AvailabilityActive
	if c.Availability != "" {
		if !slices.Contains(availability, c.Availability) {
			return out, fmt.Errorf("availability %q: want one of %s", c.Availability, strings.Join(availability, ", "))
		}
		out.Availability = volume.Availability(c.Availability)
	}
	return out, nil
}

func segments(v any) (map[string]string, error) {
	out := map[string]string{}
	switch s := v.(type) {
	case map[string]any:
		for k, x := range s {
			out[k] = fmt.Sprint(x)
		}
	case []any:
		for _, x := range s {
			k, val, ok := strings.Cut(fmt.Sprint(x), "=")
			if !ok {
				return nil, fmt.Errorf("topology segment %q: want key=value", x)
			}
			out[k] = val
		}
	default:
		return nil, fmt.Errorf("topology segments: want a mapping or a list of key=value")
	}
	return out, nil
}

// Engine is what Apply needs of the Docker Engine API.
type Engine interface {
	// Inspect returns the volume named name, or nil if there is none.
	Inspect(ctx context.Context, name string) (*volume.Volume, error)
	Create(ctx context.Context, v Volume) error
}

// Result is what Apply did with one volume.
type Result struct {
	Name   string
	Action string // "created" or "exists"
}

// Apply creates the volumes that do not exist. A volume that exists with
// another spec is an error naming the difference, and then nothing is
// created: every volume is checked before the first is made.
func Apply(ctx context.Context, e Engine, vols []Volume) ([]Result, error) {
	var conflicts []string
	missing := map[string]bool{}
	for _, v := range vols {
		cur, err := e.Inspect(ctx, v.Name)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if cur == nil {
			missing[v.Name] = true
			continue
		}
		if why := differs(v, cur); why != "" {
			conflicts = append(conflicts, fmt.Sprintf("volume %s (%s) exists with %s", v.Name, v.Key, why))
		}
	}
	if len(conflicts) > 0 {
		return nil, fmt.Errorf("nothing created: %s", strings.Join(conflicts, "; "))
	}
	var res []Result
	for _, v := range vols {
		if !missing[v.Name] {
			res = append(res, Result{v.Name, "exists"})
			continue
		}
		if err := e.Create(ctx, v); err != nil {
			return res, fmt.Errorf("create volume %s: %w", v.Name, err)
		}
		res = append(res, Result{v.Name, "created"})
	}
	return res, nil
}

// differs says how an existing volume differs from the declared one, or
// "" if it is the same: driver, options and the cluster spec (but its
// availability, which an operator changes on purpose: a drained volume is
// still the declared one).
func differs(want Volume, cur *volume.Volume) string {
	var d []string
	if cur.Driver != want.Driver {
		d = append(d, fmt.Sprintf("driver %s, not %s", cur.Driver, want.Driver))
	}
	if !maps.Equal(cur.Options, want.DriverOpts) && (len(cur.Options) > 0 || len(want.DriverOpts) > 0) {
		d = append(d, fmt.Sprintf("driver_opts %v, not %v", cur.Options, want.DriverOpts))
	}
	if cur.ClusterVolume == nil {
		return strings.Join(append(d, "no cluster spec: it is a local volume"), ", ")
	}
	have := cur.ClusterVolume.Spec
	have.Availability, want.Spec.Availability = "", ""
	if have.Group != want.Spec.Group {
		d = append(d, fmt.Sprintf("group %q, not %q", have.Group, want.Spec.Group))
	}
	if !reflect.DeepEqual(have.AccessMode, want.Spec.AccessMode) {
		d = append(d, fmt.Sprintf("access mode %s, not %s", accessString(have.AccessMode), accessString(want.Spec.AccessMode)))
	}
	if capOf(have.CapacityRange) != capOf(want.Spec.CapacityRange) {
		d = append(d, fmt.Sprintf("capacity range %s, not %s", capOf(have.CapacityRange), capOf(want.Spec.CapacityRange)))
	}
	if !reflect.DeepEqual(have.Secrets, want.Spec.Secrets) && (len(have.Secrets) > 0 || len(want.Spec.Secrets) > 0) {
		d = append(d, "other secrets")
	}
	if !reflect.DeepEqual(topo(have.AccessibilityRequirements), topo(want.Spec.AccessibilityRequirements)) {
		d = append(d, "other accessibility requirements")
	}
	return strings.Join(d, ", ")
}

func accessString(a *volume.AccessMode) string {
	if a == nil {
		return "none"
	}
	kind := "block"
	if a.MountVolume != nil {
		kind = "mount"
		if a.MountVolume.FsType != "" {
			kind += " " + a.MountVolume.FsType
		}
	}
	return fmt.Sprintf("%s/%s %s", a.Scope, a.Sharing, kind)
}

func capOf(c *volume.CapacityRange) string {
	if c == nil {
		return "0-0"
	}
	return strconv.FormatInt(c.RequiredBytes, 10) + "-" + strconv.FormatInt(c.LimitBytes, 10)
}

func topo(t *volume.TopologyRequirement) *volume.TopologyRequirement {
	if t == nil || len(t.Requisite)+len(t.Preferred) == 0 {
		return nil
	}
	return t
}
