package deskrun

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"sync"
	"time"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// lastID is the millisecond and the random part of the newest id made in
// this process (see NewID).
var lastID struct {
	sync.Mutex
	ms   uint64
	tail [10]byte
}

// NewID returns a new identifier with the given prefix ("m" for machines,
// "j" for jobs, …): 48 bits of milliseconds then 80 random bits, so ids sort
// by creation time, which the queue relies on. Within one millisecond the
// ids of one process still sort in the order they were made: the random
// part of the previous id is incremented instead of drawn again (as ULID's
// monotonic mode does). An id for an earlier time is simply random.
func NewID(prefix string, now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	lastID.Lock()
	if ms == lastID.ms && increment(lastID.tail[:]) {
		copy(b[6:], lastID.tail[:])
	} else {
		_, _ = rand.Read(b[6:])
		if ms >= lastID.ms {
			lastID.ms = ms
			copy(lastID.tail[:], b[6:])
		}
	}
	lastID.Unlock()
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}

// increment adds one to the big-endian number in b; false if it
// overflowed (then a fresh random part is drawn).
func increment(b []byte) bool {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return true
		}
	}
	return false
}
