package backend

import (
	"errors"
	"slices"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

func TestReadEachLeavesOutWhatIsGone(t *testing.T) {
	records := map[string]string{"a": "A", "c": "C"}
	read := func(id string) (*string, error) {
		if id == "bad" {
			return nil, errors.New("unreadable")
		}
		r, ok := records[id]
		if !ok {
			return nil, csierr.NotFound("%s is gone", id)
		}
		return &r, nil
	}
	got, err := ReadEach([]string{"a", "b", "c"}, read)
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, r := range got {
		vals = append(vals, *r)
	}
	if !slices.Equal(vals, []string{"A", "C"}) {
		t.Fatalf("read %v, want [A C]", vals)
	}
	if got, err := ReadEach([]string{}, read); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("no ids: %v, %v; want an empty list", got, err)
	}
	if _, err := ReadEach([]string{"a", "bad"}, read); err == nil || err.Error() != "unreadable" {
		t.Fatalf("an unreadable record: %v, want its error", err)
	}
}
