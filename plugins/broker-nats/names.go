package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// Names in NATS.
const (
	// streamName is the JetStream stream that holds every topic's messages.
	streamName = "MICRO"
	// subjectPrefix starts the subject of every topic: topic t is subject "micro.msg.t".
	subjectPrefix = "micro.msg."
	// streamSubjects is the stream's one subject filter.
	streamSubjects = subjectPrefix + ">"
)

// Consumer names. A name is the topic and the group, each escaped ('_' as "__", '.' as
// "_d"), joined by "_g": ("orders.created", "billing") is "orders_dcreated_gbilling".
// Every '_' in a name starts a two-byte escape, so two pairs never share a name. A name
// longer than maxNameLen keeps a prefix cut at an escape boundary, followed by "_h" and
// 32 hex digits of the pair's SHA-256: "_h" is no escape of the plain form, so a hashed
// name never equals a plain one.
const (
	// maxNameLen keeps names under JetStream's limit of 255 bytes with room to spare: a
	// durable consumer is a directory of that name in the server's store.
	maxNameLen = 200
	// hashedPrefixLen is how much of the plain form a hashed name keeps.
	hashedPrefixLen = maxNameLen - len("_h") - 32
)

// subject returns the NATS subject of topic, a valid topic name.
func subject(topic string) string { return subjectPrefix + topic }

// consumerName returns the durable consumer's name for group on topic, both valid names
// (letters, digits, '_', '-', dots).
func consumerName(topic, group string) string {
	var b strings.Builder
	escapeName(&b, topic)
	b.WriteString("_g")
	escapeName(&b, group)
	name := b.String()
	if len(name) <= maxNameLen {
		return name
	}
	cut := hashedPrefixLen
	// Do not cut an escape in two: count the underscores that end the prefix; an odd
	// count leaves one '_' that starts an escape whose second byte was cut off.
	n := 0
	for i := cut - 1; i >= 0 && name[i] == '_'; i-- {
		n++
	}
	if n%2 == 1 {
		cut--
	}
	sum := sha256.Sum256([]byte(topic + "\x00" + group))
	return name[:cut] + "_h" + hex.EncodeToString(sum[:16])
}

// escapeName writes s to b with '_' as "__" and '.' as "_d".
func escapeName(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '_':
			b.WriteString("__")
		case '.':
			b.WriteString("_d")
		default:
			b.WriteByte(s[i])
		}
	}
}

// Headers. A Message's header keys go into NATS headers as they are, except those that
// NATS reads as its own: "Nats-…" (Nats-Msg-Id, Nats-Rollup, Nats-Expected-…) would steer
// JetStream, and "Status" or "Description" on an empty body would look like a status
// message to the client. Those, and keys that already start with escapePrefix, get
// escapePrefix in front on the wire, compared case-insensitively, and lose it when read.
const escapePrefix = "Micro-Nats-"

// natsPrefix starts the header keys that NATS and JetStream use.
const natsPrefix = "Nats-"

// valueSep joins the values of one header in a Message (sdk/broker's rule).
const valueSep = "\n"

// toNATSHeader returns h as NATS headers: several values joined by valueSep become
// several values of one key. It refuses a key that is empty or holds a byte a NATS
// header key cannot hold, and a value with a carriage return.
func toNATSHeader(h map[string]string) (nats.Header, error) {
	nh := make(nats.Header, len(h)+2)
	for k, v := range h {
		if err := checkKey(k); err != nil {
			return nil, err
		}
		if strings.IndexByte(v, '\r') >= 0 {
			return nil, fmt.Errorf("header %q: value holds a carriage return", k)
		}
		if needsEscape(k) {
			k = escapePrefix + k
		}
		nh[k] = strings.Split(v, valueSep)
	}
	return nh, nil
}

// fromNATSHeader returns the Message headers in nh: NATS's own ("Nats-…") are left out,
// escaped keys lose escapePrefix, and several values are joined by valueSep. It returns
// nil for no headers.
func fromNATSHeader(nh nats.Header) map[string]string {
	var h map[string]string
	for k, vs := range nh {
		if hasPrefixFold(k, natsPrefix) {
			continue
		}
		if s, ok := strings.CutPrefix(k, escapePrefix); ok && s != "" {
			k = s
		}
		if h == nil {
			h = make(map[string]string, len(nh))
		}
		h[k] = strings.Join(vs, valueSep)
	}
	return h
}

// checkKey returns an error if k cannot be a NATS header key: empty, or holding a colon,
// white space or a byte outside printable ASCII.
func checkKey(k string) error {
	if k == "" {
		return fmt.Errorf("header key is empty")
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("header key %q has %q at byte %d; a key is printable ASCII without spaces or colons", k, rune(c), i)
		}
	}
	return nil
}

// needsEscape reports whether k would be read as one of NATS's own header keys, or as an
// escaped one.
func needsEscape(k string) bool {
	return strings.EqualFold(k, "Status") || strings.EqualFold(k, "Description") ||
		hasPrefixFold(k, natsPrefix) || hasPrefixFold(k, escapePrefix)
}

// hasPrefixFold reports whether s starts with prefix, ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// maxTopicLen is the longest topic or group name, in bytes (sdk/broker's rule).
const maxTopicLen = 200

// checkName returns an error if name, a topic or a group (kind says which), is not one or
// more segments of ASCII letters, digits, '_' and '-' joined by dots, at most 200 bytes.
// micro checks names before they reach the plugin; this keeps a name that slipped through
// from becoming a NATS wildcard.
func checkName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", kind)
	}
	if len(name) > maxTopicLen {
		return fmt.Errorf("%s is %d bytes long, longer than %d", kind, len(name), maxTopicLen)
	}
	seg := 0
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '.':
			if seg == 0 {
				return fmt.Errorf("%s %q has an empty segment", kind, name)
			}
			seg = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			seg++
		default:
			return fmt.Errorf("%s %q has %q at byte %d; a name is segments of letters, digits, '_' and '-' joined by dots", kind, name, rune(c), i)
		}
	}
	if seg == 0 {
		return fmt.Errorf("%s %q has an empty segment", kind, name)
	}
	return nil
}
