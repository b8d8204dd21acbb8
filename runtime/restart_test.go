package runtime

import (
	"slices"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/config"
)

func TestRestartKeys(t *testing.T) {
	a := config.Default()
	b := config.Default()
	b.Server.Ingress = "127.0.0.1:9999" // needs a restart
	b.Server.MaxBody = 1 << 10          // live
	b.Server.AllowedHosts = []string{"x"}
	b.Registry.TTL = time.Minute // needs a restart
	b.Registry.Plugin = "consul" // a live switch
	b.Log.Level = "debug"
	b.Security.Mode = config.SecurityOff
	b.Client.Timeout = time.Second // live
	got := restartKeys(&a, &b)
	want := []string{"server.ingress", "registry.ttl", "log.level", "security.mode"}
	if !slices.Equal(got, want) {
		t.Errorf("restartKeys = %v, want %v", got, want)
	}
	if s := liveServer(a.Server, b.Server); s.Ingress != a.Server.Ingress || s.MaxBody != b.Server.MaxBody || !slices.Equal(s.AllowedHosts, b.Server.AllowedHosts) {
		t.Errorf("liveServer = %+v", s)
	}
}

func TestBrokerChanged(t *testing.T) {
	a := config.Default().Broker
	b := a
	b.MaxDeliveries, b.Backoff = 9, time.Minute // delivery settings apply live
	if brokerChanged(a, b) {
		t.Error("a change of delivery settings switches brokers")
	}
	if m := mergeBroker(a, b); m.MaxDeliveries != 9 || m.Plugin != a.Plugin {
		t.Errorf("mergeBroker = %+v", m)
	}
	b.URL = "nats://127.0.0.1:4222"
	if !brokerChanged(a, b) {
		t.Error("a change of url does not switch brokers")
	}
}
