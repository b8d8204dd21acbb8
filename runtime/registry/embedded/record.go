package embedded

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// readEntry reads an entry file, up to maxRecordSize bytes. It returns the file's info too, so
// that a caller who removes the file can check that it removes the file it read.
func readEntry(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fi, fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	if fi.Size() > maxRecordSize {
		return nil, fi, fmt.Errorf("%d bytes, more than %d", fi.Size(), maxRecordSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, fi, err
	}
	if len(data) > maxRecordSize {
		return nil, fi, fmt.Errorf("more than %d bytes", maxRecordSize)
	}
	return data, fi, nil
}

// writeEntry replaces dir/name with data atomically: readers see the old contents or the new,
// never a part. The data is not fsynced: entries live for a TTL, so after a power loss every
// entry has expired anyway, and a torn file is then skipped as unreadable and later removed.
func writeEntry(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeIfSame removes path if it is still the file described by seen. A writer who replaced
// it in the meantime (a heartbeat) keeps its new file. The check and the removal are two
// steps, so a replacement that lands between them is lost; callers only remove files that
// have been dead for a while, where that is unlikely and costs at most one heartbeat.
func removeIfSame(path string, seen os.FileInfo) bool {
	cur, err := os.Lstat(path)
	if err != nil || !os.SameFile(cur, seen) {
		return false
	}
	return os.Remove(path) == nil
}
