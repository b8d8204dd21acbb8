package embedded

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

// A message file holds one message, in this binary form:
//
//	"mcbm"             magic, 4 bytes
//	version            1 byte, recordVersion
//	time               8 bytes, big-endian Unix nanoseconds
//	id, topic          each a uvarint length and its bytes
//	header count       uvarint, then each key and value as a uvarint length and its bytes
//	body               a uvarint length and its bytes
//	checksum           4 bytes, big-endian CRC-32C of everything before it
//
// A file that is truncated, altered, or has bytes after the checksum fails to decode.
const (
	recordMagic   = "mcbm"
	recordVersion = 1
	// recordFixed is the size of the fixed parts: magic, version, time and checksum.
	recordFixed = len(recordMagic) + 1 + 8 + 4
)

// maxIDLen bounds a message ID, in bytes.
const maxIDLen = 256

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errForeignVersion marks a message file of a record version this package does not know.
var errForeignVersion = errors.New("unknown record version")

// encodeRecord returns the file contents for m.
func encodeRecord(m *broker.Message) []byte {
	n := recordFixed + 3*binary.MaxVarintLen64 + len(m.ID) + len(m.Topic) + len(m.Body)
	for k, v := range m.Header {
		n += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	b := make([]byte, 0, n)
	b = append(b, recordMagic...)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Time.UnixNano()))
	b = appendBytes(b, m.ID)
	b = appendBytes(b, m.Topic)
	b = binary.AppendUvarint(b, uint64(len(m.Header)))
	for k, v := range m.Header {
		b = appendBytes(b, k)
		b = appendBytes(b, v)
	}
	b = appendBytes(b, string(m.Body))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeRecord parses and checks a message file, which may have been cut short by a crash,
// damaged by a disk, or written by anyone who can write to the directory.
func decodeRecord(data []byte) (*broker.Message, error) {
	if len(data) < recordFixed {
		return nil, fmt.Errorf("record of %d bytes is too short", len(data))
	}
	if string(data[:len(recordMagic)]) != recordMagic {
		return nil, errors.New("record does not start with the magic bytes")
	}
	if v := data[len(recordMagic)]; v != recordVersion {
		return nil, fmt.Errorf("%w %d", errForeignVersion, v)
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, errors.New("record checksum mismatch")
	}
	r := reader{b: body[len(recordMagic)+1:]}
	ns := int64(binary.BigEndian.Uint64(r.b))
	r.b = r.b[8:]
	if ns <= 0 {
		return nil, fmt.Errorf("record has a bad time %d", ns)
	}
	m := &broker.Message{Time: time.Unix(0, ns)}
	m.ID = r.string("id")
	m.Topic = r.string("topic")
	count := r.uvarint("header count")
	// Each header takes at least two bytes, so a count past what is left is a lie that
	// must not size an allocation.
	if r.err == nil && count > uint64(len(r.b))/2 {
		r.err = fmt.Errorf("record has %d headers in %d bytes", count, len(r.b))
	}
	if r.err == nil && count > 0 {
		m.Header = make(map[string]string, count)
		for i := uint64(0); i < count && r.err == nil; i++ {
			k, v := r.string("header key"), r.string("header value")
			if _, dup := m.Header[k]; dup && r.err == nil {
				r.err = fmt.Errorf("record has header %q twice", k)
			}
			m.Header[k] = v
		}
	}
	m.Body = []byte(r.string("body"))
	switch {
	case r.err != nil:
		return nil, r.err
	case len(r.b) != 0:
		return nil, fmt.Errorf("record has %d bytes past its body", len(r.b))
	case m.ID == "" || len(m.ID) > maxIDLen:
		return nil, fmt.Errorf("record has an ID of %d bytes", len(m.ID))
	}
	if err := broker.ValidTopic(m.Topic); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	return m, nil
}

// reader reads the variable parts of a record; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("record has a bad %s length", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string(what string) string {
	n := r.uvarint(what)
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("record has a %s of %d bytes, past its end", what, n)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
