package metrics

import (
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// SettingsSeries is the metric through which each node's plugin tells
// swarm-csi doctor (package ops) what must be the same on every node: its
// backend, its driver name and the storage it reaches (the backend's
// topology: the store id of a shared data directory, a hash of Ceph's
// monitors and pool, a cloud location); its version too.
const SettingsSeries = "swarm_csi_settings"

// The labels of SettingsSeries.
const (
	SettingBackend = "backend"
	SettingDriver  = "driver_name"
	SettingStorage = "storage"
	SettingVersion = "version"
)

// SettingsCollector is the series SettingsSeries, always 1, with the
// settings as its labels.
func SettingsCollector(backend, driver, version string, topology map[string]string) prometheus.Collector {
	var storage []string
	for _, k := range slices.Sorted(maps.Keys(topology)) {
		storage = append(storage, k+"="+topology[k])
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: SettingsSeries,
		Help: "1, with this plugin's settings that must match on every node as labels: backend, driver name, storage reached (the backend's topology), version.",
		ConstLabels: prometheus.Labels{SettingBackend: backend, SettingDriver: driver,
			SettingStorage: strings.Join(storage, ","), SettingVersion: version},
	}, func() float64 { return 1 })
}
