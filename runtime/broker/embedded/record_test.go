package embedded

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

func TestRecordRoundTrip(t *testing.T) {
	m := &broker.Message{ID: "id-1", Topic: "a.b", Header: map[string]string{"X": "1\n2", "": ""},
		Body: []byte("body"), Time: time.Unix(0, 1234567890123)}
	got, err := decodeRecord(encodeRecord(m))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Topic != m.Topic || string(got.Body) != "body" || !got.Time.Equal(m.Time) ||
		len(got.Header) != 2 || got.Header["X"] != "1\n2" {
		t.Fatalf("decoded %+v, want %+v", got, m)
	}
	data := encodeRecord(m)
	for i := range data {
		if _, err := decodeRecord(data[:i]); err == nil {
			t.Fatalf("a record cut to %d bytes decodes", i)
		}
		bad := append([]byte(nil), data...)
		bad[i] ^= 0x40
		if _, err := decodeRecord(bad); err == nil {
			t.Fatalf("a record with byte %d flipped decodes", i)
		}
	}
	data[len(recordMagic)] = recordVersion + 1
	if _, err := decodeRecord(data); !errors.Is(err, errForeignVersion) {
		t.Errorf("a newer version: %v, want errForeignVersion", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(&broker.Message{ID: "x", Topic: "t", Time: time.Unix(1, 0)}))
	f.Add(encodeRecord(&broker.Message{ID: "y", Topic: "a.b", Header: map[string]string{"k": "v"}, Body: []byte("b"), Time: time.Now()}))
	f.Add([]byte(recordMagic + "\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeRecord(data)
		if err != nil {
			return
		}
		again, err := decodeRecord(encodeRecord(m))
		if err != nil || again.ID != m.ID || again.Topic != m.Topic || string(again.Body) != string(m.Body) ||
			len(again.Header) != len(m.Header) || !again.Time.Equal(m.Time) {
			t.Fatalf("re-encoding %+v gives %+v, %v", m, again, err)
		}
	})
}

func TestEntryNames(t *testing.T) {
	e := entry{time: 12345, hash: idHash("x"), n: 3, notBefore: 99}
	if got, ok := parseReady(e.readyName()); !ok || got != e {
		t.Errorf("parseReady(%s) = %+v, %v", e.readyName(), got, ok)
	}
	e = entry{time: 12345, hash: idHash("x"), n: 3, owner: "0123456789abcdef", deadline: 7}
	if got, ok := parseInflight(e.inflightName()); !ok || got != e {
		t.Errorf("parseInflight(%s) = %+v, %v", e.inflightName(), got, ok)
	}
	for _, bad := range []string{"", "x", "..", e.inflightName() + "-1", strings.Replace(e.readyName(), "-3-", "-+3-", 1),
		strings.ToUpper(e.readyName()), strings.Replace(e.readyName(), "-3-", "-03-", 1)} {
		if _, ok := parseReady(bad); ok {
			t.Errorf("parseReady(%q) succeeded", bad)
		}
	}
}

// TestUndeliverableFiles puts in a group's ready directory what micro did not write: a
// corrupt message, a truncated one, one of another topic, a symbolic link, a named pipe, a
// huge file. None is delivered, none blocks, and the good message still is.
func TestUndeliverableFiles(t *testing.T) {
	logs := &syncBuffer{}
	b := openB(t, Options{MaxMessage: 1000, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	good := publish(t, b, "t", "good")
	ready := filepath.Join(b.Dir(), "topics", "t", "groups", "g", "ready")
	now := good.Time.UnixNano()
	name := func(i int64) string {
		return entry{time: now - 1000 + i, hash: idHash(string(rune('a' + i)))}.readyName()
	}
	data := encodeRecord(&broker.Message{ID: "z", Topic: "t", Time: time.Unix(0, now)})
	corrupt := append([]byte(nil), data...)
	corrupt[len(corrupt)/2] ^= 1
	other := encodeRecord(&broker.Message{ID: "b", Topic: "other", Time: time.Unix(0, now-999)})
	files := map[string][]byte{
		name(0): corrupt,
		name(1): other,
		name(2): data[:len(data)-3],
		name(3): make([]byte, 8000),
	}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(ready, n), d, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, data, 0o600)
	if err := os.Symlink(secret, filepath.Join(ready, name(4))); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(ready, name(5)), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ready, "junk"), nil, 0o600)
	d := next(t, c)
	if d.ID != good.ID {
		t.Fatalf("delivered %+v, want only %s", d, good.ID)
	}
	ack(t, c, d)
	aside, _ := os.ReadDir(filepath.Join(b.Dir(), "topics", "t", "corrupt"))
	if len(aside) != 4 {
		t.Errorf("moved aside: %v, want the 4 regular files", aside)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Errorf("the link's target: %v", err)
	}
	for _, want := range []string{asideMsg, strayMsg, "checksum", "does not belong here", "more than"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// Sweeping and measuring step over the same.
	if err := b.sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
}
