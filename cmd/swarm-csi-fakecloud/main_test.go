package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer collects the command's output while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("secret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	readyFile := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--dir", filepath.Join(dir, "cloud"), "--servers", "a,b", "--location", "hel1",
			"--token-file", tokenFile, "--ready-file", readyFile, "--no-devices", "--action-delay", "10ms"}, &stdout, io.Discard)
	}()
	var ready Ready
	for deadline := time.Now().Add(10 * time.Second); ; {
		data, err := os.ReadFile(readyFile)
		if err == nil && json.Unmarshal(data, &ready) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(ready.Servers) != 2 || ready.Servers[1].Name != "b" || ready.Servers[0].Location != "hel1" ||
		!strings.HasPrefix(ready.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("ready: %+v", ready)
	}
	req, _ := http.NewRequest("GET", ready.Endpoint+"/servers", nil)
	req.Header.Set("Authorization", "Bearer secret-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /servers: %s", resp.Status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), ready.Endpoint) {
		t.Errorf("stdout %q lacks the endpoint", stdout.String())
	}
	if _, err := os.Stat(readyFile); !os.IsNotExist(err) {
		t.Errorf("ready file left: %v", err)
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--dir", t.TempDir(), "extra"},
		{"--dir", t.TempDir(), "--token", "a", "--token-file", "/x"},
		{"--dir", t.TempDir(), "--action-delay", "-1s"},
		{"--dir", t.TempDir(), "--port", "70000"},
		{"--dir", t.TempDir(), "--rate-limit", "0"},
		{"--dir", t.TempDir(), "--rate-refill", "0s"},
		{"--dir", t.TempDir(), "--location", "mars1"},
		{"--dir", t.TempDir(), "--servers", "a,a"},
		{"--no-such-flag"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
