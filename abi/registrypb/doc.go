// Package registrypb is the registry plugin protocol: the gRPC service that micro calls on
// a registry plugin, generated from registry.proto. Plugins do not use it directly; they
// implement sdk/registry.Registry and call sdk/registry.Serve.
//
// The generated files are committed; abi/gen.sh (or go generate) regenerates them.
package registrypb

//go:generate ../gen.sh
