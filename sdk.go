// Package micro carries the sources of micro's wrapper SDK, so that the micro binary can
// write them into a wrapper project made anywhere (`micro wrapper new`), with no network
// and no checkout of micro. It lives at the module's root because go:embed reaches only
// the files under a package's directory, and the SDK spans sdk/wrapper and abi/wrapper.
package micro

import "embed"

// WrapperSDK holds the directories abi/wrapper and sdk/wrapper (with every package under
// them, tests included) and go.mod, at their paths in this module. cmd/micro picks out
// what a wrapper needs to build.
//
//go:embed go.mod abi/wrapper sdk/wrapper
var WrapperSDK embed.FS
