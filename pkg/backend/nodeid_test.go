package backend

import (
	"strings"
	"testing"
)

func TestValidNodeID(t *testing.T) {
	for _, id := range []string{"a", "node-1", "Node_2.example", "0", strings.Repeat("n", 128)} {
		if !ValidNodeID(id) {
			t.Errorf("ValidNodeID(%q) = false, want true", id)
		}
	}
	for _, id := range []string{"", "-a", ".a", "_a", "a/b", "../a", "a b", "a\n", "ä", strings.Repeat("n", 129)} {
		if ValidNodeID(id) {
			t.Errorf("ValidNodeID(%q) = true, want false", id)
		}
	}
}
