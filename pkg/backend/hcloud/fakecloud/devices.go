package fakecloud

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// A volume's data is a sparse image file, volumes/<id>.img; attached, it
// is a loop device, linked from the server's by-id directory.

func (c *Cloud) imagePath(id int64) string {
	return filepath.Join(c.dir, "volumes", strconv.FormatInt(id, 10)+".img")
}

// loopTag marks the loop device of a volume of this cloud.
func (c *Cloud) loopTag(id int64) string {
	return "hcloud-volume-" + strconv.FormatInt(id, 10) + "@" + c.tag
}

// createImage makes a volume's sparse image, formatted if format is set.
func (c *Cloud) createImage(id, size int64, format *string) error {
	path := c.imagePath(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && format != nil {
		force := map[string]string{"ext4": "-F", "xfs": "-f"}[*format]
		if out, merr := exec.Command("mkfs."+*format, force, "-q", path).CombinedOutput(); merr != nil {
			err = fmt.Errorf("mkfs.%s: %v: %s", *format, merr, strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		_ = os.Remove(path)
	}
	return err
}

func (c *Cloud) removeImage(id int64) error {
	if err := os.Remove(c.imagePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// growImage grows a volume's image; an attached volume's device sees the
// new size at once, as a server's disk does after a resize.
func (c *Cloud) growImage(id, size int64, dev string) error {
	image := c.imagePath(id)
	if err := os.Truncate(image, size); err != nil {
		return err
	}
	if dev == "" || c.opts.NoDevices {
		return nil
	}
	return c.devices.Refresh(dev, image)
}

// plug gives a server a volume's device: a loop device on the image (the
// image itself with NoDevices) and its by-id link. It returns the device.
func (c *Cloud) plug(id int64, deviceDir string) (string, error) {
	image := c.imagePath(id)
	dev := image
	if !c.opts.NoDevices {
		var err error
		if dev, err = c.devices.Find(image, c.loopTag(id)); err != nil {
			return "", err
		}
		if dev == "" {
			if dev, err = c.devices.Attach(image, c.loopTag(id), true); err != nil {
				return "", err
			}
		}
	}
	link := filepath.Join(deviceDir, DevicePrefix+strconv.FormatInt(id, 10))
	tmp := link + ".new"
	_ = os.Remove(tmp)
	err := os.Symlink(dev, tmp)
	if err == nil {
		err = os.Rename(tmp, link)
	}
	if err != nil {
		_ = os.Remove(tmp)
		if !c.opts.NoDevices {
			err = errors.Join(err, c.devices.Detach(dev))
		}
		return "", err
	}
	return dev, nil
}

// unplugDevice removes a volume's by-id link from a server and its loop
// device.
func (c *Cloud) unplugDevice(id int64, dev, deviceDir string) error {
	link := filepath.Join(deviceDir, DevicePrefix+strconv.FormatInt(id, 10))
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if dev == "" || c.opts.NoDevices {
		return nil
	}
	return c.devices.Detach(dev)
}

// unplug detaches a volume at once, without an action. Callers hold c.mu.
func (c *Cloud) unplug(v *volume, s *server) error {
	err := c.unplugDevice(v.ID, v.device, s.deviceDir)
	v.Server, v.device = nil, ""
	for i, id := range s.Volumes {
		if id == v.ID {
			s.Volumes = append(s.Volumes[:i], s.Volumes[i+1:]...)
			break
		}
	}
	return err
}

// loopDevicesUnder lists the loop devices whose backing file is under dir,
// by device path.
func loopDevicesUnder(dir string) map[string]string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	found := map[string]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if strings.HasPrefix(backing, dir+"/") {
			found["/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f)))] = backing
		}
	}
	return found
}

// sweep detaches every loop device on this cloud's images and removes the
// images and by-id directories.
func (c *Cloud) sweep() error {
	var errs []error
	for dev := range loopDevicesUnder(filepath.Join(c.dir, "volumes")) {
		errs = append(errs, c.devices.Detach(dev))
	}
	for _, sub := range []string{"volumes", "servers"} {
		errs = append(errs, os.RemoveAll(filepath.Join(c.dir, sub)))
	}
	return errors.Join(errs...)
}

// Leftovers lists what the cloud holds that its state does not explain: a
// loop device, a by-id link or an image file of a volume that is gone or
// not attached there. After a clean run it is empty.
func (c *Cloud) Leftovers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	attachedDev := map[string]bool{}
	for _, v := range c.volumes {
		if v.Server != nil {
			attachedDev[v.device] = true
		}
	}
	for dev, backing := range loopDevicesUnder(filepath.Join(c.dir, "volumes")) {
		if !attachedDev[dev] {
			out = append(out, fmt.Sprintf("loop device %s on %s", dev, backing))
		}
	}
	links, _ := filepath.Glob(filepath.Join(c.dir, "servers", "*", "by-id", "*"))
	for _, link := range links {
		sid, _ := strconv.ParseInt(filepath.Base(filepath.Dir(filepath.Dir(link))), 10, 64)
		vid, err := strconv.ParseInt(strings.TrimPrefix(filepath.Base(link), DevicePrefix), 10, 64)
		if v, ok := c.volumes[vid]; err != nil || !ok || v.Server == nil || *v.Server != sid {
			out = append(out, "by-id link "+link)
		}
	}
	images, _ := filepath.Glob(filepath.Join(c.dir, "volumes", "*"))
	for _, image := range images {
		vid, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(image), ".img"), 10, 64)
		if _, ok := c.volumes[vid]; err != nil || !ok {
			out = append(out, "image "+image)
		}
	}
	return out
}
