package main

import (
	"encoding/json"
	"io"
	"os"
	"slices"
	"sort"
	"testing"
)

// The plugin's settings are config.json's env entries (docker plugin set
// refuses any other): it must declare every variable the driver reads,
// and nothing else but PATH.
func TestPluginConfigDeclaresEveryVariable(t *testing.T) {
	read := map[string]bool{}
	_, _ = parseConfig(nil, func(name string) string {
		read[name] = true
		return ""
	}, io.Discard)

	raw, err := os.ReadFile("../../deploy/config.json")
	if err != nil {
		t.Fatal(err)
	}
	var c struct{ Env []struct{ Name string } }
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("deploy/config.json: %v", err)
	}
	var declared, want []string
	for _, e := range c.Env {
		if e.Name != "PATH" {
			declared = append(declared, e.Name)
		}
	}
	for name := range read {
		want = append(want, name)
	}
	sort.Strings(declared)
	sort.Strings(want)
	if !slices.Equal(declared, want) {
		t.Errorf("deploy/config.json declares %v,\nthe driver reads %v", declared, want)
	}
}
