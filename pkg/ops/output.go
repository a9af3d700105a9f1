package ops

import (
	"encoding/json"
	"sort"
	"text/tabwriter"
)

// print writes v as indented JSON with --format json, else the table
// that table writes.
func (o *op) print(v any, table func(w *tabwriter.Writer)) error {
	if o.json {
		enc := json.NewEncoder(o.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
	table(w)
	return w.Flush()
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
