package embedded

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// An entry is one message waiting for a group (or for a topic that has no group yet). Its
// file is a hard link to the message file in the topic's ids directory, so the message is
// written once however many groups hold it, and what differs per group is the entry's name:
//
//	ready:    <time>-<hash>-<delivered>-<not before>
//	inflight: <time>-<hash>-<attempt>-<owner>-<deadline>
//
// time is the publish time, not before and deadline are times too, each 16 lowercase
// hexadecimal digits of Unix nanoseconds (so names sort by time); hash names the message
// file (see idHash); delivered counts the deliveries so far and attempt is that of the
// delivery under way, in decimal; owner is the ID of the Broker whose consumer holds it.
type entry struct {
	time      int64
	hash      string
	n         int // delivered (ready) or attempt (inflight)
	notBefore int64
	owner     string
	deadline  int64
}

// maxAttempts bounds the delivery count in a name.
const maxAttempts = 1 << 30

// idHash returns the name of the message file for a message ID: the first 128 bits of its
// SHA-256, in hexadecimal. IDs are arbitrary strings, and the hash makes any of them a safe
// file name of fixed length.
func idHash(id string) string {
	s := sha256.Sum256([]byte(id))
	return hex.EncodeToString(s[:16])
}

func (e entry) readyName() string {
	return fmt.Sprintf("%016x-%s-%d-%016x", e.time, e.hash, e.n, e.notBefore)
}

func (e entry) inflightName() string {
	return fmt.Sprintf("%016x-%s-%d-%s-%016x", e.time, e.hash, e.n, e.owner, e.deadline)
}

// parseReady parses a ready entry's name.
func parseReady(name string) (entry, bool) {
	f := strings.Split(name, "-")
	if len(f) != 4 {
		return entry{}, false
	}
	var e entry
	ok := parseTime(f[0], &e.time) && parseHex(f[1], 32) && parseCount(f[2], &e.n) && parseTime(f[3], &e.notBefore)
	e.hash = f[1]
	return e, ok
}

// parseInflight parses an inflight entry's name.
func parseInflight(name string) (entry, bool) {
	f := strings.Split(name, "-")
	if len(f) != 5 {
		return entry{}, false
	}
	var e entry
	ok := parseTime(f[0], &e.time) && parseHex(f[1], 32) && parseCount(f[2], &e.n) &&
		parseHex(f[3], ownerIDLen) && parseTime(f[4], &e.deadline)
	e.hash, e.owner = f[1], f[3]
	return e, ok && e.n > 0
}

// parseHex reports whether s is n lowercase hexadecimal digits.
func parseHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func parseTime(s string, t *int64) bool {
	if !parseHex(s, 16) {
		return false
	}
	v, err := strconv.ParseUint(s, 16, 63)
	*t = int64(v)
	return err == nil
}

func parseCount(s string, n *int) bool {
	if s == "" || len(s) > 10 || (s[0] == '0' && len(s) > 1) || strings.Trim(s, "0123456789") != "" {
		return false
	}
	v, err := strconv.Atoi(s)
	*n = v
	return err == nil && v >= 0 && v <= maxAttempts
}
