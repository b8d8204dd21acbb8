package quota

import (
	"math"
	"slices"
)

// waterLevel returns the max-min fair level of capacity over wants sorted ascending: the L
// for which Σ min(w, L) = capacity, so that each client's fair share is min(its wants, L).
// It is +Inf when the wants fit the capacity, and every client gets what it asks.
//
// It fills the smallest wants first: while the smallest of the k clients left wants no
// more than an equal split of what remains, it gets all it wants; the first that wants
// more sets the level for itself and everyone above it.
func waterLevel(sorted []float64, capacity float64) float64 {
	remaining := max(capacity, 0)
	for i, w := range sorted {
		split := remaining / float64(len(sorted)-i)
		if w > split {
			return split
		}
		remaining -= w
	}
	return math.Inf(1)
}

// sortedInsert adds v to s, which is sorted ascending, and keeps it sorted.
func sortedInsert(s []float64, v float64) []float64 {
	i, _ := slices.BinarySearch(s, v)
	return slices.Insert(s, i, v)
}

// sortedRemove removes one element equal to v from s, which is sorted ascending.
func sortedRemove(s []float64, v float64) []float64 {
	i, found := slices.BinarySearch(s, v)
	if !found {
		return s // not reached: the caller removes only what it inserted
	}
	return slices.Delete(s, i, i+1)
}
