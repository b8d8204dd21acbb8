//go:build !linux

package wasm

import "context"

// withMemoryAllocator returns ctx as it is: guests' linear memories live in the Go heap,
// as wazero keeps them by default.
func withMemoryAllocator(ctx context.Context) context.Context { return ctx }
