package wasm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawGuest is a wrapper written against the ABI alone, without sdk/wrapper, in a module of
// its own: what abi/README.md promises a guest in any language can do.
const rawGuest = `package main

//go:wasmimport micro set_header
func setHeader(name, value string)

//go:wasmexport micro_wrapper_abi_v1
func abiV1() {}

//go:wasmexport on_init
func onInit() int32 { return 0 }

//go:wasmexport on_request
func onRequest() int32 {
	setHeader("X-Raw", "VALUE")
	return 0
}

//go:wasmexport on_response
func onResponse() {}

func main() {}
`

func writeRawGuest(t *testing.T, dir, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module rawguest\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(rawGuest, "VALUE", value, 1)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBuildCached(t *testing.T) {
	ctx := context.Background()
	src, cache := t.TempDir(), t.TempDir()
	writeRawGuest(t, src, "one-b1f4e2")
	h, _ := newTestHost(t)
	header := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		w, err := h.Load(ctx, "raw", b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(ctx)
		return w.OnRequest(ctx, newCall(nil)).Header["X-Raw"]
	}

	p1, err := BuildCached(ctx, src, cache)
	if err != nil {
		t.Fatal(err)
	}
	if got := header(p1); got != "one-b1f4e2" {
		t.Errorf("X-Raw = %q", got)
	}
	st1, _ := os.Stat(p1)
	p2, err := BuildCached(ctx, src, cache)
	if err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(p2); p2 != p1 || !st2.ModTime().Equal(st1.ModTime()) {
		t.Errorf("unchanged sources were built again: %s, then %s", p1, p2)
	}

	// A change gives a new build. (Its bytes tell: a second Load would cost a compile of
	// 10s under the race detector.)
	writeRawGuest(t, src, "two-b1f4e2")
	p3, err := BuildCached(ctx, src, cache)
	if err != nil {
		t.Fatal(err)
	}
	if p3 == p1 {
		t.Fatal("changed sources got the old build")
	}
	if b, err := os.ReadFile(p3); err != nil || !bytes.Contains(b, []byte("two-b1f4e2")) {
		t.Errorf("the new build %s does not hold the new value (%v)", p3, err)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Errorf("the old build %s is still there: %v", p1, err)
	}
	if files, _ := filepath.Glob(filepath.Join(cache, "*")); len(files) != 1 {
		t.Errorf("cache holds %v, want only the new build", files)
	}
}

func TestBuildErrors(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	writeRawGuest(t, src, "x")
	if err := os.WriteFile(filepath.Join(src, "bad.go"), []byte("package main\n\nvar _ = nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "sub", "g.wasm")
	err := Build(ctx, src, out)
	if err == nil || !strings.Contains(err.Error(), "undefined: nope") || !strings.Contains(err.Error(), "build wrapper "+src) {
		t.Errorf("Build of a broken package: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed build left %s", out)
	}
	if _, err := BuildCached(ctx, filepath.Join(src, "missing"), t.TempDir()); err == nil {
		t.Error("BuildCached of a missing directory succeeded")
	}
}
