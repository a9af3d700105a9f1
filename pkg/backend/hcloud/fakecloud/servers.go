package fakecloud

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// server is a server of the fake project.
type server struct {
	schema.Server
	deviceDir string // its /dev/disk/by-id
}

// Server describes a fake server to the tests and tools that use it.
type Server struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
	// DeviceDir is the server's /dev/disk/by-id: attached volumes appear
	// there as scsi-0HC_Volume_<id>.
	DeviceDir string `json:"device_dir"`
	// MetadataURL is the server's metadata service endpoint.
	MetadataURL string `json:"metadata_url"`
	Location    string `json:"location"`
}

// AddServer adds a running server in a location ("fsn1", "nbg1", "hel1",
// "ash", "hil" or "sin") and creates its by-id directory.
func (c *Cloud) AddServer(name, location string) (Server, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	loc, ok := c.location(location)
	if !ok {
		return Server{}, fmt.Errorf("fakecloud: no location %q", location)
	}
	for _, s := range c.servers {
		if s.Name == name {
			return Server{}, fmt.Errorf("fakecloud: a server is named %q already", name)
		}
	}
	id := c.nextID("server")
	dir := filepath.Join(c.dir, "servers", strconv.FormatInt(id, 10), "by-id")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Server{}, err
	}
	ip := fmt.Sprintf("192.0.2.%d", id%250+1)
	c.servers[id] = &server{deviceDir: dir, Server: schema.Server{
		ID:      id,
		Name:    name,
		Status:  "running",
		Created: time.Now().UTC().Truncate(time.Second),
		PublicNet: schema.ServerPublicNet{
			IPv4: schema.ServerPublicNetIPv4{ID: id, IP: ip},
			IPv6: schema.ServerPublicNetIPv6{ID: id, IP: fmt.Sprintf("2001:db8:%x::/64", id)},
		},
		ServerType: schema.ServerType{ID: 104, Name: "cx22", Description: "CX22", Cores: 2, Memory: 4, Disk: 40,
			StorageType: "local", CPUType: "shared", Architecture: "x86"},
		Location:        loc,
		Labels:          map[string]string{},
		Volumes:         []int64{},
		PrimaryDiskSize: 40,
	}}
	return c.serverInfo(c.servers[id]), nil
}

// Servers lists the fake servers.
func (c *Cloud) Servers() []Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Server
	for _, id := range sortedKeys(c.servers) {
		out = append(out, c.serverInfo(c.servers[id]))
	}
	return out
}

func (c *Cloud) serverInfo(s *server) Server {
	return Server{ID: s.ID, Name: s.Name, DeviceDir: s.deviceDir, MetadataURL: c.MetadataURL(s.ID), Location: s.Location.Name}
}

func (s *server) view() schema.Server {
	out := s.Server
	out.Volumes = slices.Clone(s.Volumes)
	return out
}

func (c *Cloud) listServers(r *http.Request) (int, any, *apiError) {
	q := r.URL.Query()
	sel, apiErr := parseSelector(q.Get("label_selector"))
	if apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	var items []schema.Server
	for _, id := range sortedKeys(c.servers) {
		s := c.servers[id]
		if (q.Get("name") == "" || s.Name == q.Get("name")) && sel.matches(s.Labels) {
			items = append(items, s.view())
		}
	}
	c.mu.Unlock()
	if apiErr := sortItems(items, q["sort"], map[string]func(a, b schema.Server) int{
		"id":   func(a, b schema.Server) int { return byInt64(a.ID, b.ID) },
		"name": func(a, b schema.Server) int { return strings.Compare(a.Name, b.Name) },
	}); apiErr != nil {
		return 0, nil, apiErr
	}
	page, m, apiErr := paginate(items, q)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, struct {
		schema.ServerListResponse
		Meta meta `json:"meta"`
	}{schema.ServerListResponse{Servers: nonNil(page)}, m}, nil
}

func (c *Cloud) getServer(r *http.Request) (int, any, *apiError) {
	id, apiErr := pathID(r, "id", "server")
	if apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.servers[id]
	if !ok {
		return 0, nil, notFound("server")
	}
	return http.StatusOK, schema.ServerGetResponse{Server: s.view()}, nil
}

// Locations, with the ids and network zones of the real ones.
func defaultLocations() []schema.Location {
	return []schema.Location{
		{ID: 1, Name: "fsn1", Description: "Falkenstein DC Park 1", Country: "DE", City: "Falkenstein", Latitude: 50.47612, Longitude: 12.370071, NetworkZone: "eu-central"},
		{ID: 2, Name: "nbg1", Description: "Nuremberg DC Park 1", Country: "DE", City: "Nuremberg", Latitude: 49.452102, Longitude: 11.076665, NetworkZone: "eu-central"},
		{ID: 3, Name: "hel1", Description: "Helsinki DC Park 1", Country: "FI", City: "Helsinki", Latitude: 60.169855, Longitude: 24.938379, NetworkZone: "eu-central"},
		{ID: 4, Name: "ash", Description: "Ashburn, VA", Country: "US", City: "Ashburn, VA", Latitude: 39.045821, Longitude: -77.487073, NetworkZone: "us-east"},
		{ID: 5, Name: "hil", Description: "Hillsboro, OR", Country: "US", City: "Hillsboro, OR", Latitude: 45.54222, Longitude: -122.951924, NetworkZone: "us-west"},
		{ID: 6, Name: "sin", Description: "Singapore", Country: "SG", City: "Singapore", Latitude: 1.283333, Longitude: 103.833333, NetworkZone: "ap-southeast"},
	}
}

// location finds a location by name or id. Callers hold c.mu.
func (c *Cloud) location(nameOrID string) (schema.Location, bool) {
	for _, l := range c.locations {
		if l.Name == nameOrID || strconv.FormatInt(l.ID, 10) == nameOrID {
			return l, true
		}
	}
	return schema.Location{}, false
}

func (c *Cloud) listLocations(r *http.Request) (int, any, *apiError) {
	q := r.URL.Query()
	c.mu.Lock()
	var items []schema.Location
	for _, l := range c.locations {
		if q.Get("name") == "" || l.Name == q.Get("name") {
			items = append(items, l)
		}
	}
	c.mu.Unlock()
	if apiErr := sortItems(items, q["sort"], map[string]func(a, b schema.Location) int{
		"id":   func(a, b schema.Location) int { return byInt64(a.ID, b.ID) },
		"name": func(a, b schema.Location) int { return strings.Compare(a.Name, b.Name) },
	}); apiErr != nil {
		return 0, nil, apiErr
	}
	page, m, apiErr := paginate(items, q)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, struct {
		schema.LocationListResponse
		Meta meta `json:"meta"`
	}{schema.LocationListResponse{Locations: nonNil(page)}, m}, nil
}

func (c *Cloud) getLocation(r *http.Request) (int, any, *apiError) {
	id, apiErr := pathID(r, "id", "location")
	if apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.location(strconv.FormatInt(id, 10))
	if !ok {
		return 0, nil, notFound("location")
	}
	return http.StatusOK, schema.LocationGetResponse{Location: l}, nil
}

// datacenters names a data centre per location for the metadata's
// availability zone.
var datacenters = map[string]string{"fsn1": "fsn1-dc14", "nbg1": "nbg1-dc3", "hel1": "hel1-dc2", "ash": "ash-dc1", "hil": "hil-dc1", "sin": "sin-dc1"}

// serveMetadata answers a server's metadata service, in plain text as the
// real one at 169.254.169.254 does.
func (c *Cloud) serveMetadata(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("server"), 10, 64)
	c.mu.Lock()
	s, ok := c.servers[id]
	var view schema.Server
	if ok {
		view = s.view()
	}
	c.mu.Unlock()
	if err != nil || !ok {
		http.NotFound(w, r)
		return
	}
	values := map[string]string{
		"instance-id":       strconv.FormatInt(view.ID, 10),
		"hostname":          view.Name,
		"availability-zone": datacenters[view.Location.Name],
		"region":            view.Location.NetworkZone,
		"public-ipv4":       view.PublicNet.IPv4.IP,
	}
	v, ok := values[r.PathValue("key")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(v))
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
