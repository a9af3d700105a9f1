package loop

import "github.com/swarm-csi/swarm-csi/pkg/loopdev"

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
	return l.devs.Attach(image, tag, directIO)
}

func (l *loopDevices) detach(dev string) error { return l.devs.Detach(dev) }

func (l *loopDevices) refresh(dev, image string) error { return l.devs.Refresh(dev, image) }
