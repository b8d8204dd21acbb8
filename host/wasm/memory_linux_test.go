package wasm

import (
	"bytes"
	"testing"
)

func TestMmapMemory(t *testing.T) {
	m, ok := newMmapMemory(0, 4*wasmPageSize).(*mmapMemory)
	if !ok {
		t.Fatal("no mapping for a memory of 4 pages")
	}
	defer m.Free()
	b := m.Reallocate(wasmPageSize)
	if len(b) != wasmPageSize || !bytes.Equal(b, make([]byte, wasmPageSize)) {
		t.Fatalf("a page of %d bytes, not all zero", len(b))
	}
	copy(b, "kept")
	grown := m.Reallocate(3 * wasmPageSize)
	if len(grown) != 3*wasmPageSize || &grown[0] != &b[0] || string(grown[:4]) != "kept" {
		t.Fatal("growing moved the memory or lost its bytes")
	}
	if m.Reallocate(5*wasmPageSize) != nil {
		t.Error("grown past its limit")
	}
	if _, ok := newMmapMemory(0, 8<<30).(*heapMemory); !ok {
		t.Error("a limit past 4 GiB is not kept in the heap")
	}
}

func TestHeapMemory(t *testing.T) {
	var h heapMemory
	copy(h.Reallocate(10), "kept")
	if b := h.Reallocate(1000); len(b) != 1000 || string(b[:4]) != "kept" {
		t.Fatal("growing lost the bytes")
	}
	h.Free()
}
