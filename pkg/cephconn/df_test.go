package cephconn

import "testing"

func TestMaxAvail(t *testing.T) {
	out := []byte(`{"stats":{"total_bytes":8589934592},"pools":[
		{"name":"device_health_metrics","id":1,"stats":{"stored":0,"max_avail":2000}},
		{"name":"rbd","id":2,"stats":{"stored":12,"max_avail":8052928512}}]}`)
	if avail, listed, err := MaxAvail(out, "rbd"); avail != 8052928512 || !listed || err != nil {
		t.Errorf("rbd: %d, %v, %v; want 8052928512, listed", avail, listed, err)
	}
	if avail, listed, err := MaxAvail(out, "new"); avail != 0 || listed || err != nil {
		t.Errorf("a pool not listed yet: %d, %v, %v", avail, listed, err)
	}
	if _, _, err := MaxAvail([]byte("Error EINVAL"), "rbd"); err == nil {
		t.Error("no error for output that is not JSON")
	}
}
