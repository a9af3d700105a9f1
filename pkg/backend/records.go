package backend

import (
	"errors"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// ReadEach reads the record of each of ids, in their order, for a listing:
// those deleted meanwhile (NotFound) are left out.
func ReadEach[T any](ids []string, read func(id string) (*T, error)) ([]*T, error) {
	out := make([]*T, 0, len(ids))
	for _, id := range ids {
		r, err := read(id)
		if errors.Is(err, csierr.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}
