// Command lockappend appends numbered lines to a file that processes on
// several nodes append to at once, as the Swarm suite's replicas do on a
// shared CephFS volume, where O_APPEND alone loses lines (each client
// writes at the end it last knew of). Every interval it opens the file,
// takes a POSIX write lock on it (fcntl F_SETLKW, which the MDS
// arbitrates between clients), stats it (which brings its size up to
// date), writes "PREFIX N", fsyncs and closes it, which releases the
// lock. It exits with status 1 at the first error, naming it.
//
// With -cat it prints the file under a shared lock instead: a reader
// without one may see the end of a line being appended, or a stale page.
//
//	lockappend FILE PREFIX INTERVAL
//	lockappend -cat FILE
package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-cat" {
		if err := cat(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "lockappend:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: lockappend FILE PREFIX INTERVAL | -cat FILE")
		os.Exit(2)
	}
	every, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lockappend:", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		if err := appendLine(os.Args[1], fmt.Sprintf("%s %d\n", os.Args[2], i)); err != nil {
			fmt.Fprintf(os.Stderr, "lockappend: line %d: %v\n", i, err)
			os.Exit(1)
		}
		time.Sleep(every)
	}
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := f.Stat(); err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func cat(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := f.Stat(); err != nil {
		return err
	}
	_, err = io.Copy(os.Stdout, f)
	return err
}
