package ops

import (
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// SettingsSeries is the metric through which each node's plugin tells
// doctor what must be the same on every node: its backend, its driver name
// and the storage it reaches (the backend's topology: the store id of a
// shared data directory, a hash of Ceph's monitors and pool, a cloud
// location); its version too.
const SettingsSeries = "swarm_csi_settings"

const (
	settingBackend = "backend"
	settingDriver  = "driver_name"
	settingStorage = "storage"
	settingVersion = "version"
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
		ConstLabels: prometheus.Labels{settingBackend: backend, settingDriver: driver,
			settingStorage: strings.Join(storage, ","), settingVersion: version},
	}, func() float64 { return 1 })
}
