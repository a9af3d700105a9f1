package fakecloud

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Hetzner Cloud's label rules: a value, and a key's name part, is at most
// 63 characters, alphanumeric at both ends with '-', '_' and '.' between;
// a key may start with a DNS subdomain prefix and '/'.
var (
	labelValuePattern = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelPrefixLabel  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// checkLabels validates labels as the API does.
func checkLabels(labels map[string]string) *apiError {
	for k, v := range labels {
		if err := checkLabelKey(k); err != nil {
			return invalidInput("labels", err.Error())
		}
		if len(v) > 63 || !labelValuePattern.MatchString(v) {
			return invalidInput("labels", fmt.Sprintf("label value %q of key %q is invalid", v, k))
		}
	}
	return nil
}

func checkLabelKey(k string) error {
	name := k
	if prefix, rest, ok := strings.Cut(k, "/"); ok {
		name = rest
		if prefix == "" || len(prefix) > 253 {
			return fmt.Errorf("label key %q has an invalid prefix", k)
		}
		for _, part := range strings.Split(prefix, ".") {
			if !labelPrefixLabel.MatchString(part) {
				return fmt.Errorf("label key %q has an invalid prefix", k)
			}
		}
		if prefix == "hetzner.cloud" || strings.HasSuffix(prefix, ".hetzner.cloud") {
			return fmt.Errorf("label key %q uses a reserved prefix", k)
		}
	}
	if name == "" || len(name) > 63 || !labelValuePattern.MatchString(name) {
		return fmt.Errorf("label key %q is invalid", k)
	}
	return nil
}

// selector is a parsed label_selector: all of its requirements must hold.
type selector []requirement

type requirement struct {
	key    string
	op     string // "=", "!=", "exists", "!exists", "in", "notin"
	values []string
}

// parseSelector parses a label selector: requirements separated by commas,
// each k=v, k==v, k!=v, k, !k, k in (a,b) or k notin (a,b).
func parseSelector(s string) (selector, *apiError) {
	var sel selector
	bad := func() (selector, *apiError) {
		return nil, invalidInput("label_selector", fmt.Sprintf("label selector %q is invalid", s))
	}
	for _, expr := range splitSelector(s) {
		expr = strings.TrimSpace(expr)
		if expr == "" {
			return bad()
		}
		var r requirement
		switch {
		case strings.Contains(expr, "!="):
			k, v, _ := strings.Cut(expr, "!=")
			r = requirement{key: strings.TrimSpace(k), op: "!=", values: []string{strings.TrimSpace(v)}}
		case strings.Contains(expr, "=="):
			k, v, _ := strings.Cut(expr, "==")
			r = requirement{key: strings.TrimSpace(k), op: "=", values: []string{strings.TrimSpace(v)}}
		case strings.Contains(expr, "="):
			k, v, _ := strings.Cut(expr, "=")
			r = requirement{key: strings.TrimSpace(k), op: "=", values: []string{strings.TrimSpace(v)}}
		case strings.HasSuffix(expr, ")"):
			open := strings.Index(expr, "(")
			if open < 0 {
				return bad()
			}
			fields := strings.Fields(expr[:open])
			if len(fields) != 2 || (fields[1] != "in" && fields[1] != "notin") {
				return bad()
			}
			inner := expr[open+1 : len(expr)-1]
			r = requirement{key: fields[0], op: fields[1]}
			for _, v := range strings.Split(inner, ",") {
				r.values = append(r.values, strings.TrimSpace(v))
			}
		case strings.HasPrefix(expr, "!"):
			r = requirement{key: strings.TrimSpace(expr[1:]), op: "!exists"}
		default:
			r = requirement{key: expr, op: "exists"}
		}
		if checkLabelKey(r.key) != nil {
			return bad()
		}
		for _, v := range r.values {
			if len(v) > 63 || !labelValuePattern.MatchString(v) {
				return bad()
			}
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// splitSelector splits at the commas outside parentheses.
func splitSelector(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var parts []string
	depth, start := 0, 0
	for i, ch := range s {
		switch ch {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

// matches reports whether labels satisfy the selector.
func (sel selector) matches(labels map[string]string) bool {
	for _, r := range sel {
		v, ok := labels[r.key]
		switch r.op {
		case "=":
			ok = ok && v == r.values[0]
		case "!=":
			ok = !ok || v != r.values[0]
		case "exists":
		case "!exists":
			ok = !ok
		case "in":
			ok = ok && slices.Contains(r.values, v)
		case "notin":
			ok = !ok || !slices.Contains(r.values, v)
		}
		if !ok {
			return false
		}
	}
	return true
}
