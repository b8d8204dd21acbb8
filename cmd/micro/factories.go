package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/microhost/micro/host/plugin"
	"github.com/microhost/micro/host/wasm"
	"github.com/microhost/micro/runtime/broker"
	embeddedbroker "github.com/microhost/micro/runtime/broker/embedded"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/embedded"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// factories turn micro.toml sections into registries, transports and wrappers: the
// built-in ones in process, plugins through host/plugin, wrappers through host/wasm.
type factories struct {
	base     string // the config file's directory
	cacheDir string // <base>/.micro: built plugins, built and compiled wrappers

	once    sync.Once
	wasm    *wasm.Host
	wasmErr error
}

func newFactories(configPath string) (*factories, error) {
	abs, err := filepath.Abs(configPath)
	if err != nil {
		return nil, fmt.Errorf("config path %s: %w", configPath, err)
	}
	base := filepath.Dir(abs)
	return &factories{base: base, cacheDir: filepath.Join(base, ".micro")}, nil
}

// registry opens the registry that [registry] names.
func (f *factories) registry(ctx context.Context, c config.Registry, logger *slog.Logger) (registry.Registry, error) {
	if c.Plugin == "embedded" {
		return embedded.Open(c.Dir, embedded.Options{Logger: logger})
	}
	token := ""
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("registry.token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	pc := plugin.Config{
		Name:       c.Plugin,
		Path:       c.Path,
		CacheDir:   filepath.Join(f.cacheDir, "bin"),
		SHA256:     c.SHA256,
		Address:    c.Address,
		Datacenter: c.Datacenter,
		Token:      token,
	}
	if pc.Path == "" {
		dir, err := f.pluginSource("registry-"+c.Plugin, "registry.path")
		if err != nil {
			return nil, err
		}
		pc.SourceDir = dir
	}
	return plugin.OpenRegistry(ctx, pc, logger)
}

// pluginSource finds the source of a plugin shipped with micro: plugins/NAME next to the
// config file, or in the working directory.
func (f *factories) pluginSource(name, pathKey string) (string, error) {
	for _, base := range []string{f.base, "."} {
		dir := filepath.Join(base, "plugins", name)
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return filepath.Abs(dir)
		}
	}
	return "", fmt.Errorf("no plugins/%s next to the config file or in the working directory: set %s to the plugin's executable", name, pathKey)
}

// transport opens the transport plugin that [transport] names through host/plugin; the
// runtime runs the built-in HTTP transport itself.
func (f *factories) transport(ctx context.Context, c config.Transport, s config.Server, logger *slog.Logger) (transport.Transport, error) {
	tc := plugin.TransportConfig{
		Name:     c.Plugin,
		Path:     c.Path,
		CacheDir: filepath.Join(f.cacheDir, "bin"),
		SHA256:   c.SHA256,
		URL:      c.URL,
		Auth:     plugin.BackendAuth(c.Auth),
	}
	if tc.Path == "" {
		dir, err := f.pluginSource("transport-"+c.Plugin, "transport.path")
		if err != nil {
			return nil, err
		}
		tc.SourceDir = dir
	}
	return plugin.OpenTransport(ctx, tc, logger)
}

// broker opens the broker that [broker] names: the embedded one in process, or a plugin
// through host/plugin.
func (f *factories) broker(ctx context.Context, c config.Broker, logger *slog.Logger) (broker.Broker, error) {
	if c.Plugin == "embedded" {
		return embeddedbroker.Open(ctx, embeddedbroker.Options{
			Dir: c.Dir, MaxBytes: int64(c.MaxBytes), MaxAge: c.MaxAge, MaxMessage: int64(c.MaxMessage), Logger: logger,
		})
	}
	bc := plugin.BrokerConfig{
		Name:       c.Plugin,
		Path:       c.Path,
		CacheDir:   filepath.Join(f.cacheDir, "bin"),
		SHA256:     c.SHA256,
		URL:        c.URL,
		Auth:       plugin.BackendAuth(c.Auth),
		MaxAge:     c.MaxAge,
		MaxBytes:   int64(c.MaxBytes),
		MaxMessage: int64(c.MaxMessage),
	}
	if bc.Path == "" {
		dir, err := f.pluginSource("broker-"+c.Plugin, "broker.path")
		if err != nil {
			return nil, err
		}
		bc.SourceDir = dir
	}
	return plugin.OpenBroker(ctx, bc, logger)
}

// wrapper loads the WebAssembly wrapper that [wrappers.NAME] describes, building it from
// Go source first when it names a source directory.
func (f *factories) wrapper(ctx context.Context, name string, c config.Wrapper, leases wrapper.Leases, logger *slog.Logger) (wrapper.Wrapper, error) {
	f.once.Do(func() {
		f.wasm, f.wasmErr = wasm.NewHost(wasm.HostOptions{CacheDir: filepath.Join(f.cacheDir, "wasm-compiled"), Logger: logger})
	})
	if f.wasmErr != nil {
		return nil, f.wasmErr
	}
	path := c.Path
	if c.Source != "" {
		logger.Info("building wrapper", "wrapper", name, "source", c.Source)
		var err error
		if path, err = wasm.BuildCached(ctx, c.Source, filepath.Join(f.cacheDir, "wasm")); err != nil {
			return nil, fmt.Errorf("building wrapper %q from %s: %w", name, c.Source, err)
		}
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wrapper %q: %w", name, err)
	}
	var cfgJSON []byte // nil: the guest gets {}
	if c.Config != nil {
		if cfgJSON, err = json.Marshal(c.Config); err != nil {
			return nil, fmt.Errorf("wrapper %q: config: %w", name, err)
		}
	}
	return f.wasm.Load(ctx, name, bin, wasm.Options{
		ABI:         c.ABI,
		Instances:   c.Instances,
		Shard:       c.Shard,
		OnTrap:      c.OnTrap,
		MemoryLimit: uint64(c.MemoryLimit),
		Timeout:     c.Timeout,
		Config:      cfgJSON,
		Leases:      leases,
	})
}

// close releases the wasm host.
func (f *factories) close(ctx context.Context) {
	if f.wasm != nil {
		_ = f.wasm.Close(ctx)
	}
}
