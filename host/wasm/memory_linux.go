package wasm

import (
	"context"
	"syscall"

	"github.com/tetratelabs/wazero/experimental"
)

// withMemoryAllocator returns ctx with the allocator of guests' linear memories: each in
// its own mapping outside the Go heap (see mmapMemory).
func withMemoryAllocator(ctx context.Context) context.Context {
	return experimental.WithMemoryAllocator(ctx, experimental.MemoryAllocatorFunc(newMmapMemory))
}

// mmapMemory is a guest's linear memory in a mapping of its own, which reserves the address
// space of the memory's limit at once. Pages cost memory only once the guest touches them,
// growing the memory neither copies it nor leaves the old copy to the garbage collector,
// the memory is not part of the Go heap (so it does not raise the heap size at which the
// next collection starts), and closing the instance returns it to the OS at once.
type mmapMemory struct{ mapped []byte }

var _ experimental.LinearMemory = (*mmapMemory)(nil)

// newMmapMemory implements experimental.MemoryAllocatorFunc. When the address space cannot
// be had, the memory lives in the Go heap instead.
func newMmapMemory(_, limit uint64) experimental.LinearMemory {
	if limit == 0 || limit > 1<<32 {
		return &heapMemory{}
	}
	b, err := syscall.Mmap(-1, 0, int(limit), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return &heapMemory{}
	}
	return &mmapMemory{mapped: b}
}

// Reallocate implements experimental.LinearMemory.
func (m *mmapMemory) Reallocate(size uint64) []byte {
	if size > uint64(len(m.mapped)) {
		return nil // beyond the limit: memory.grow fails
	}
	return m.mapped[:size:size]
}

// Free implements experimental.LinearMemory.
func (m *mmapMemory) Free() {
	if m.mapped != nil {
		_ = syscall.Munmap(m.mapped)
		m.mapped = nil
	}
}

// heapMemory is a guest's linear memory in the Go heap, as wazero keeps it by default:
// growing it copies it into a larger slice. It backs a memory where the address space for
// an mmapMemory cannot be had.
type heapMemory struct{ buf []byte }

var _ experimental.LinearMemory = (*heapMemory)(nil)

// Reallocate implements experimental.LinearMemory.
func (h *heapMemory) Reallocate(size uint64) []byte {
	if size > uint64(cap(h.buf)) {
		buf := make([]byte, size, max(size, 2*uint64(cap(h.buf))))
		copy(buf, h.buf)
		h.buf = buf
	}
	h.buf = h.buf[:size]
	return h.buf
}

// Free implements experimental.LinearMemory.
func (h *heapMemory) Free() { h.buf = nil }
