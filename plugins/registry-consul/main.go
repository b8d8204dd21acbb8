// Command registry-consul is micro's Consul registry plugin: micro starts it as a go-plugin
// subprocess when micro.toml says
//
//	[registry]
//	plugin = "consul"
//	address = "127.0.0.1:8500"
//
// It keeps micro's services in Consul through the local agent's HTTP API
// (github.com/hashicorp/consul/api): each node is a service instance with a TTL check that
// micro's heartbeats keep passing, lookups return passing instances only, and Watch runs on
// blocking queries. It elects leaders (Campaign, Leader) with a session's lock on the key
// micro/elect/<name>. The address, datacenter and token come from micro.toml, or else from the
// standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN and related environment variables. The token
// is never logged.
package main

import "github.com/microhost/micro/sdk/registry"

func main() { registry.Serve(newConsul(registry.Logger())) }
