package cephconn

import (
	"encoding/json"
	"fmt"
)

// MaxAvail reads what pool can still take, after replication, from out,
// the monitors' answer to {"prefix":"df","format":"json"} (ceph df). A pool is listed once a manager has reported its
// statistics, a while after it was made: listed says whether it is.
func MaxAvail(out []byte, pool string) (avail int64, listed bool, err error) {
	var df struct {
		Pools []struct {
			Name  string `json:"name"`
			Stats struct {
				MaxAvail int64 `json:"max_avail"`
			} `json:"stats"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(out, &df); err != nil {
		return 0, false, fmt.Errorf("unexpected output of ceph df: %v", err)
	}
	for _, p := range df.Pools {
		if p.Name == pool {
			return p.Stats.MaxAvail, true, nil
		}
	}
	return 0, false, nil
}
