package deskrun

import (
	"strings"
	"testing"
	"time"
)

// TestNewIDOrder: ids sort by time, and ids made in the same millisecond
// sort in the order they were made (the queue places runs in id order).
func TestNewIDOrder(t *testing.T) {
	now := time.Now()
	prev := NewID("r", now)
	for i := range 10000 {
		id := NewID("r", now)
		if id <= prev {
			t.Fatalf("id %d: %s does not sort after %s", i, id, prev)
		}
		prev = id
	}
	later := NewID("r", now.Add(time.Millisecond))
	if later <= prev {
		t.Fatalf("a later millisecond sorts first: %s ≤ %s", later, prev)
	}
	earlier := NewID("r", now.Add(-time.Hour))
	if earlier >= prev {
		t.Fatalf("an hour earlier sorts after: %s ≥ %s", earlier, prev)
	}
	if !strings.HasPrefix(earlier, "r_") || len(earlier) != len(prev) {
		t.Fatalf("malformed id %q", earlier)
	}
}

func TestIncrementCarries(t *testing.T) {
	b := []byte{0, 0xff, 0xff}
	if !increment(b) || b[0] != 1 || b[1] != 0 || b[2] != 0 {
		t.Fatalf("carry: %v", b)
	}
	b = []byte{0xff, 0xff}
	if increment(b) {
		t.Fatal("overflow not reported")
	}
}
