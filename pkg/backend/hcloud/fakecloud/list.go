package fakecloud

import (
	"cmp"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Pagination as the API answers it: previous, next and last page are null
// where there is none.
type pagination struct {
	Page         int  `json:"page"`
	PerPage      int  `json:"per_page"`
	PreviousPage *int `json:"previous_page"`
	NextPage     *int `json:"next_page"`
	LastPage     int  `json:"last_page"`
	TotalEntries int  `json:"total_entries"`
}

type meta struct {
	Pagination pagination `json:"pagination"`
}

const (
	defaultPerPage = 25
	maxPerPage     = 50
)

// paginate returns the page of items that the page and per_page
// parameters ask for.
func paginate[T any](items []T, q url.Values) ([]T, meta, *apiError) {
	page, perPage := 1, defaultPerPage
	if s := q.Get("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, meta{}, invalidInput("page", "must be a whole number of at least 1")
		}
		page = n
	}
	if s := q.Get("per_page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPerPage {
			return nil, meta{}, invalidInput("per_page", "must be between 1 and "+strconv.Itoa(maxPerPage))
		}
		perPage = n
	}
	last := max(1, (len(items)+perPage-1)/perPage)
	m := meta{Pagination: pagination{Page: page, PerPage: perPage, LastPage: last, TotalEntries: len(items)}}
	if page > 1 {
		prev := min(page-1, last)
		m.Pagination.PreviousPage = &prev
	}
	if page < last {
		next := page + 1
		m.Pagination.NextPage = &next
	}
	start := min((page-1)*perPage, len(items))
	end := min(start+perPage, len(items))
	return items[start:end], m, nil
}

// sortItems orders items by the sort parameters ("id", "name:desc", ...),
// by id when there are none. keys names the sortable fields.
func sortItems[T any](items []T, sorts []string, keys map[string]func(a, b T) int) *apiError {
	if len(sorts) == 0 {
		sorts = []string{"id"}
	}
	type order struct {
		cmp  func(a, b T) int
		desc bool
	}
	var orders []order
	for _, s := range sorts {
		field, dir, _ := strings.Cut(s, ":")
		f, ok := keys[field]
		if !ok || (dir != "" && dir != "asc" && dir != "desc") {
			return invalidInput("sort", "cannot sort by "+strconv.Quote(s))
		}
		orders = append(orders, order{f, dir == "desc"})
	}
	slices.SortStableFunc(items, func(a, b T) int {
		for _, o := range orders {
			if c := o.cmp(a, b); c != 0 {
				if o.desc {
					return -c
				}
				return c
			}
		}
		return 0
	})
	return nil
}

func sortedKeys[V any](m map[int64]V) []int64 {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func byInt64(a, b int64) int { return cmp.Compare(a, b) }
