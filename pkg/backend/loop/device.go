package loop

import (
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/loopdev"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// loopDevices is this backend's use of package loopdev: image files
// attached to loop devices tagged "<volume-id>@<node-tag>".
type loopDevices struct {
	devs *loopdev.Devices
}

func newLoopDevices() *loopDevices { return &loopDevices{devs: loopdev.New()} }

// loopTag is what a device's lo_file_name holds: "<volume-id>@<node-tag>".
func loopTag(volumeID, nodeTag string) string { return loopdev.Tag(volumeID, nodeTag) }

func (l *loopDevices) find(image, tag string) (string, error) { return l.devs.Find(image, tag) }

func (l *loopDevices) attach(image, tag string, directIO bool) (string, error) {
	start := time.Now()
	dev, err := l.devs.Attach(image, tag, directIO)
	metrics.Observe("loop", "attach loop device", start, err)
	return dev, err
}

func (l *loopDevices) detach(dev string) error {
	start := time.Now()
	err := l.devs.Detach(dev)
	metrics.Observe("loop", "detach loop device", start, err)
	return err
}

func (l *loopDevices) refresh(dev, image string) error {
	start := time.Now()
	err := l.devs.Refresh(dev, image)
	metrics.Observe("loop", "resize loop device", start, err)
	return err
}
