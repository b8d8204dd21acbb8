// Package abi holds the contracts between micro and its plugins: the go-plugin handshake
// and the Micro-* headers of a call here, the gRPC protocols of registry, transport and
// broker plugins in abi/registrypb, abi/transportpb and abi/brokerpb, and the wrapper ABI
// in abi/wrapper. It imports nothing of micro's,
// so that both sides build against the same constants.
package abi

// The go-plugin handshake. micro starts a plugin with MagicCookieKey=MagicCookieValue in
// its environment; a binary without it in the environment refuses to run as a plugin, and
// micro refuses a plugin that answers with another protocol version than its own.
const (
	// MagicCookieKey is the environment variable that marks a process as a micro plugin.
	MagicCookieKey = "MICRO_PLUGIN"
	// MagicCookieValue is MagicCookieKey's value. It never changes; protocol changes
	// change the protocol versions instead.
	MagicCookieValue = "8d1f3c6a0b7e4e29a5c2f41e9b06d7d3c1a8e5f2"
)

// RegistryPlugin is the name under which a registry plugin serves the registry protocol
// (abi/registrypb) in its go-plugin plugin set.
const RegistryPlugin = "registry"

// RegistryProtocolVersion is the version of the registry protocol, sent in the go-plugin
// handshake. It changes when a change to abi/registrypb would make old plugins or old
// micros misread each other; micro refuses a plugin that speaks another version. Each
// plugin kind has its own version, so that a change to one protocol does not refuse the
// plugins of another. Campaign and Leader (leader election) were added to version 1 without
// a change: plugins built before them answer UNIMPLEMENTED, which micro reports as a plugin
// that cannot elect leaders.
const RegistryProtocolVersion uint = 1

// TransportPlugin is the name under which a transport plugin serves the transport protocol
// (abi/transportpb) in its go-plugin plugin set.
const TransportPlugin = "transport"

// TransportProtocolVersion is the version of the transport protocol, sent in the go-plugin
// handshake; it changes as RegistryProtocolVersion does, for abi/transportpb.
const TransportProtocolVersion uint = 1

// BrokerPlugin is the name under which a broker plugin serves the broker protocol
// (abi/brokerpb) in its go-plugin plugin set.
const BrokerPlugin = "broker"

// BrokerProtocolVersion is the version of the broker protocol, sent in the go-plugin
// handshake; it changes as RegistryProtocolVersion does, for abi/brokerpb.
const BrokerProtocolVersion uint = 1
