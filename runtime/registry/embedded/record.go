package embedded

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/microhost/micro/runtime/registry"
)

// recordVersion is the format of the entry files this package writes. Readers skip the files of
// a newer format without removing them, so that micro versions can share a directory.
const recordVersion = 1

// maxRecordSize bounds how much of an entry file is read. A node record is a few hundred bytes.
const maxRecordSize = 1 << 20

// maxNameLen bounds service names and node IDs, which are path elements. It leaves room under
// the usual 255-byte file name limit for the ".json" suffix and the temporary file name.
const maxNameLen = 200

// errForeignVersion marks an entry written in a format this package does not know.
var errForeignVersion = errors.New("unknown record version")

// record is one node of one service, as stored in <dir>/<service>/<node ID>.json.
type record struct {
	Service string
	Node    *registry.Node
	// TTL is the ttl the node was registered with.
	TTL time.Duration
	// Expires is the wall-clock time, in Unix nanoseconds, after which the node is gone.
	Expires int64
}

// fileRecord is the JSON form of record.
type fileRecord struct {
	Version int            `json:"v"`
	Service string         `json:"service"`
	TTL     int64          `json:"ttl_ns"`
	Expires int64          `json:"expires_unix_ns"`
	Node    *registry.Node `json:"node"`
}

// encodeRecord returns the file contents for rec.
func encodeRecord(rec record) ([]byte, error) {
	return json.Marshal(fileRecord{
		Version: recordVersion,
		Service: rec.Service,
		TTL:     int64(rec.TTL),
		Expires: rec.Expires,
		Node:    rec.Node,
	})
}

// decodeRecord parses and checks an entry file. The file may come from another process, or
// from anyone who can write to the directory, so nothing in it is trusted. An error wrapping
// errForeignVersion means the file is in a format this package does not know.
func decodeRecord(data []byte) (record, error) {
	var f fileRecord
	if err := json.Unmarshal(data, &f); err != nil {
		return record{}, err
	}
	switch {
	case f.Version > recordVersion:
		return record{}, fmt.Errorf("%w %d", errForeignVersion, f.Version)
	case f.Version != recordVersion:
		return record{}, fmt.Errorf("bad record version %d", f.Version)
	case f.TTL <= 0:
		return record{}, fmt.Errorf("bad ttl_ns %d", f.TTL)
	case f.Expires <= 0:
		return record{}, fmt.Errorf("bad expires_unix_ns %d", f.Expires)
	case f.Node == nil:
		return record{}, errors.New("no node")
	}
	if err := checkName("service name", f.Service); err != nil {
		return record{}, err
	}
	if err := checkName("node ID", f.Node.ID); err != nil {
		return record{}, err
	}
	return record{
		Service: f.Service,
		Node:    f.Node,
		TTL:     time.Duration(f.TTL),
		Expires: f.Expires,
	}, nil
}

// checkName reports whether s can be a service name or node ID. Both are path elements, so
// they must be one plain file name: not empty, not too long, no separator, no control
// character, valid UTF-8, and no leading dot (which also rules out "." and "..", and keeps
// the names of temporary files, which start with a dot, apart from entries).
func checkName(kind, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s %q is empty", kind, s)
	case len(s) > maxNameLen:
		return fmt.Errorf("%s %.40q... is %d bytes long, more than %d", kind, s, len(s), maxNameLen)
	case s[0] == '.':
		return fmt.Errorf("%s %q starts with '.'", kind, s)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8", kind, s)
	}
	if i := strings.IndexFunc(s, badNameRune); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("%s %q contains %q", kind, s, r)
	}
	return nil
}

func badNameRune(r rune) bool {
	return r == '/' || r == '\\' || r < 0x20 || (r >= 0x7f && r < 0xa0)
}
