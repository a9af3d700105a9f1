package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RegistryDir holds one record per live run: what it created, so that its
// reaper, or the next run, can remove it if the run dies.
const RegistryDir = "/run/swarm-csi-e2e"

// reaperEnv names the record a re-executed test binary must reap.
const reaperEnv = "SWARM_CSI_E2E_REAPER"

// Proc identifies a process we started: a pid alone could be reused.
type Proc struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// Record is everything a run created, written before it is created.
type Record struct {
	ID    string   `json:"id"`
	Owner Proc     `json:"owner"`
	Roots []string `json:"roots"` // directories holding all the run's files
	NetNS []string `json:"netns"` // network namespaces (ip netns names)
	// Sockets of the dockerds, to leave the swarm gracefully.
	Sockets []string `json:"sockets"`
	Daemons []Proc   `json:"daemons"`
	// DataDirs are the plugins' data directories (loop images).
	DataDirs []string `json:"data_dirs"`

	path string
	lock *os.File
}

// newRecord creates and locks the record of a new run. The lock is held
// for the run's life: whoever gets it afterwards knows the run is over.
func newRecord(id string) (*Record, error) {
	if err := os.MkdirAll(RegistryDir, 0o755); err != nil {
		return nil, err
	}
	self, err := procOf(os.Getpid())
	if err != nil {
		return nil, err
	}
	r := &Record{ID: id, Owner: self, path: filepath.Join(RegistryDir, id+".json")}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	r.lock = f
	return r, r.save()
}

// save replaces the record atomically.
func (r *Record) save() error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	// Rewrite in place (the lock is on this inode); the tmp file is only
	// there so that a crash mid-write leaves a readable copy.
	if err := os.WriteFile(r.path, b, 0o644); err != nil {
		return err
	}
	return os.Remove(tmp)
}

// release removes the record and drops the lock: the run is cleaned up.
func (r *Record) release() {
	os.Remove(r.path)
	os.Remove(r.path + ".reaper.log")
	if r.lock != nil {
		r.lock.Close()
		r.lock = nil
	}
}

func loadRecord(path string) (*Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		b, err = os.ReadFile(path + ".tmp")
		if err != nil {
			return nil, err
		}
	}
	r := &Record{path: path}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// procOf reads a process's start time (field 22 of /proc/PID/stat).
func procOf(pid int) (Proc, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Proc{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return Proc{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Proc{}, err
	}
	return Proc{Pid: pid, StartTime: st}, nil
}

// Alive reports whether this very process still runs.
func (p Proc) Alive() bool {
	if p.Pid <= 0 {
		return false
	}
	cur, err := procOf(p.Pid)
	return err == nil && cur.StartTime == p.StartTime && !isZombie(p.Pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// startReaper starts a copy of this binary that waits for the record's
// lock, i.e. for this process to end, and cleans up if the record is still
// there then: after a panic, a test timeout or a kill, nothing stays. It
// runs in its own session with its output in a file, so `go test` does not
// wait for it.
func (r *Record) startReaper() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(r.path+".reaper.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe)
	cmd.Env = baseEnv(reaperEnv + "=" + r.path)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// ReaperMain must be called first thing in TestMain (and in any main that
// uses the harness): in the reaper process it cleans up and exits.
func ReaperMain() {
	path := os.Getenv(reaperEnv)
	if path == "" {
		return
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, time.Now().Format(time.RFC3339)+" reaper: "+format+"\n", args...)
	}
	os.Exit(reap(path, logf))
}

func reap(path string, logf Logf) int {
	f, err := os.Open(path)
	if err != nil {
		return 0 // already cleaned up
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		logf("lock %s: %v", path, err)
		return 1
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil || a.Ino != b.Ino {
		return 0 // the run cleaned up after itself
	}
	r, err := loadRecord(path)
	if err != nil {
		logf("%v", err)
		return 1
	}
	logf("run %s ended without cleaning up; cleaning up", r.ID)
	if err := cleanup(r, logf); err != nil {
		logf("cleanup of run %s: %v", r.ID, err)
		return 1
	}
	logf("run %s cleaned up", r.ID)
	os.Remove(path)
	os.Remove(path + ".tmp")
	os.Remove(path + ".reaper.log")
	return 0
}

// CleanStale removes what earlier runs left behind when they died with
// their reaper (a reboot, a kill of both): records nobody holds.
func CleanStale(logf Logf) error {
	paths, _ := filepath.Glob(filepath.Join(RegistryDir, "*.json"))
	var errs []error
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // a live run or its reaper holds it
			continue
		}
		r, err := loadRecord(path)
		if err != nil {
			errs = append(errs, err)
			f.Close()
			continue
		}
		logf("cleaning up run %s left by a crashed process (pid %d)", r.ID, r.Owner.Pid)
		if err := cleanup(r, logf); err != nil {
			errs = append(errs, fmt.Errorf("run %s: %w", r.ID, err))
		} else {
			os.Remove(path)
			os.Remove(path + ".tmp")
			os.Remove(path + ".reaper.log")
		}
		f.Close()
	}
	return errors.Join(errs...)
}
