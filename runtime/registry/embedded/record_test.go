package embedded

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

func FuzzDecodeRecord(f *testing.F) {
	valid, err := encodeRecord(record{
		Service: "greeter",
		Node: &registry.Node{
			ID: "greeter-1", Address: "127.0.0.1:1", Version: "1.0.0",
			Metadata: map[string]string{"zone": "a"}, Endpoints: []string{"Greeter.Hello"},
		},
		TTL:     time.Second,
		Expires: time.Now().UnixNano(),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add([]byte(""))
	f.Add([]byte("null"))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":1,"expires_unix_ns":1,"node":null}`))
	f.Add([]byte(`{"v":1,"service":"../x","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n"}}`))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"a/b"}}`))
	f.Add([]byte(`{"v":2,"service":"s"}`))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n","metadata":{}}} x`))
	// What anyone who can write to the directory might put there.
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":9223372036854775807,"expires_unix_ns":9223372036854775807,"node":{"id":"n"}}`))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":-1,"expires_unix_ns":1,"node":{"id":"n"}}`))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":1e3,"expires_unix_ns":1,"node":{"id":"n"}}`))
	f.Add([]byte(`{"v":1,"service":"s","service":".hidden","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n"}}`))
	f.Add([]byte(`{"V":1,"SERVICE":"s","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n\u0000"}}`))
	f.Add([]byte(`{"v":1,"service":"s\ud800","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n"}}`))
	f.Add([]byte(`{"v":1,"service":"s","ttl_ns":1,"expires_unix_ns":1,"node":{"id":"n","address":{},"endpoints":"x"}}`))
	f.Add([]byte(strings.Repeat("[", 10000) + strings.Repeat("]", 10000)))
	f.Add([]byte("\xef\xbb\xbf{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := decodeRecord(data)
		if err != nil {
			return
		}
		if checkName("service name", rec.Service) != nil || rec.Node == nil || checkName("node ID", rec.Node.ID) != nil {
			t.Fatalf("decoded a record with bad names: %+v", rec)
		}
		if rec.TTL <= 0 || rec.Expires <= 0 {
			t.Fatalf("decoded a record with bad times: %+v", rec)
		}
		// What is accepted can be written back, and reads back the same.
		enc, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("encoding %+v: %v", rec, err)
		}
		again, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("decoding %q, the encoding of %q: %v", enc, data, err)
		}
		enc2, err := encodeRecord(again)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", enc, enc2, err)
		}
	})
}
