package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	micrort "github.com/microhost/micro/runtime"
	"github.com/microhost/micro/runtime/config"
)

// setFlags collects repeated -set key=value flags.
type setFlags map[string]string

func (s setFlags) String() string { return "" }

func (s setFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, e.g. client.strategy=random; got %q", v)
	}
	s[k] = val
	return nil
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", `run [flags]

Starts micro on a configuration file: the ingress where apps call services by name, the
inbound server that fronts the services the file declares, and their supervised apps.
The file is watched; client, routes and services changes apply live.
Settings are layered: defaults, then the file, then MICRO_SECTION_KEY env variables, then flags.`, stderr)
	path := fs.String("c", "micro.toml", "config file")
	set := setFlags{}
	fs.Var(set, "set", "set a config key, e.g. -set client.strategy=random (repeatable)")
	ingress := fs.String("ingress", "", "ingress address (server.ingress)")
	inbound := fs.String("inbound", "", "inbound address (server.inbound)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (log.level)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	for key, v := range map[string]string{"server.ingress": *ingress, "server.inbound": *inbound, "log.level": *logLevel} {
		if v != "" {
			set[key] = v
		}
	}
	loader := &config.Loader{Path: *path, Env: os.Environ(), Flags: set}
	var rt *micrort.Runtime
	loader.OnReload = func(result string, err error) { rt.Reloaded(result, err) } // rt is set before Watch runs
	cfg, err := loader.Load()
	if err != nil {
		return err
	}
	logger := newLogger(cfg.Log, stderr)

	keeper, err := keeperArgv()
	if err != nil {
		return err
	}
	f, err := newFactories(*path)
	if err != nil {
		return err
	}
	defer f.close(context.Background())
	rt = micrort.New(cfg, micrort.Factories{Registry: f.registry, Transport: f.transport, Broker: f.broker, Wrapper: f.wrapper, Keeper: keeper}, logger)
	rt.ConfigFile(*path)
	if err := rt.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "micro listening on %s (ingress) and %s (inbound), fronting %s\n",
		rt.IngressAddr(), rt.InboundAddr(), describeServices(cfg))

	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- loader.Watch(watchCtx, logger, func(c *config.Config) { rt.Apply(ctx, c) })
	}()
	<-ctx.Done()
	stopWatch()
	if err := <-watchDone; err != nil {
		logger.Error("config watch", "err", err)
	}
	logger.Info("stopping: draining calls, deregistering, stopping apps")
	if err := rt.Stop(context.Background()); err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	logger.Info("stopped")
	return nil
}

func describeServices(cfg *config.Config) string {
	if len(cfg.Services) == 0 {
		return "no services"
	}
	var parts []string
	for name, s := range cfg.Services {
		switch {
		case s.Address != "":
			parts = append(parts, fmt.Sprintf("%s (app at %s)", name, s.Address))
		default:
			parts = append(parts, fmt.Sprintf("%s (%d instances)", name, s.Instances))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
