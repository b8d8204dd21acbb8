package abi_test

import (
	"testing"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/wrapper"
)

// TestReservedPrefix keeps the wrapper ABI's copy of the prefix, which lets a guest's module
// carry abi/wrapper alone, equal to abi's.
func TestReservedPrefix(t *testing.T) {
	if wrapper.ReservedHeaderPrefix != abi.HeaderPrefix {
		t.Errorf("abi/wrapper.ReservedHeaderPrefix is %q, abi.HeaderPrefix %q", wrapper.ReservedHeaderPrefix, abi.HeaderPrefix)
	}
}
