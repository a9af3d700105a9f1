package backend

import "regexp"

// nodeIDPattern is what a node id may be: letters, digits, '.', '_' and
// '-', at most 128, starting with a letter or digit. Node ids name files
// and records, so only ids that pass it are used.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidNodeID reports whether id may name a node.
func ValidNodeID(id string) bool { return nodeIDPattern.MatchString(id) }
