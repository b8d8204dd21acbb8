// Command greeter is the example app that micro fronts: a small HTTP service, written with the
// standard library only, that answers POST /{endpoint} with JSON.
//
// It listens on MICRO_APP_ADDR (host:port), or else 127.0.0.1:$PORT, or else 127.0.0.1:8081.
// MICRO_INSTANCE names the instance in its replies (micro sets it, e.g. "greeter-1"); the
// default is hostname-pid. MICRO_INGRESS is the host:port of micro's ingress, which
// Greeter.Call uses to call other services by name.
//
// Endpoints:
//
//	POST /Greeter.Hello   {"name":"Ada"} → {"greeting":"Hello, Ada!","instance":…,"budget":…}
//	POST /Greeter.Sleep   {"ms":5000}    → sleeps, then replies like Hello
//	POST /Greeter.Fail                   → 500 {"error":…}
//	POST /Greeter.Call    {"service":"x","endpoint":"Y.Z","body":{…}} → {"instance":…,"reply":…}
//	POST /Greeter.SetFail {"fail":true}  → makes every Greeter endpoint but SetFail answer 500
//	GET  /Greeter.Stream                 → a WebSocket; see below
//	GET  /health                         → 200 ok
//
// "budget" echoes the Micro-Timeout header the request carried. GREETER_FAIL=1 starts the
// greeter in the failing mode that Greeter.SetFail switches. With GREETER_FAIL_DIR set, an
// instance also fails while a file named after it (MICRO_INSTANCE) exists in that directory.
//
// Greeter.Stream is a streaming endpoint: a GET with Upgrade: websocket. For each message it
// receives, {"name":"Ada"} or just the text Ada, it sends a text message
// {"greeting":"Hello, Ada!","instance":…,"seq":n}, where n counts the messages of the stream
// from 1; a message it cannot use gets {"error":…,"instance":…,"seq":n} and the stream goes
// on. It closes the stream normally when the client closes it. In the failing mode it refuses
// the upgrade with 500 {"error":…}, as the other endpoints do. For tests, the message
// {"die":true} makes the greeter drop the TCP connection at once, with no close frame, as if
// the app had died mid-stream.
//
// On SIGTERM or SIGINT it stops accepting, closes open streams with status 1001 (going
// away), finishes the requests in flight (for at most a few seconds) and exits 0.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// shutdownTimeout bounds how long a stop waits for requests in flight.
const shutdownTimeout = 5 * time.Second

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stdout, nil))
	addr := listenAddr(os.Getenv)
	fail, err := failMode(os.Getenv)
	if err != nil {
		return err
	}
	s := newServer(instanceName(os.Getenv), os.Getenv("MICRO_INGRESS"), fail, logger)
	s.failDir = os.Getenv("GREETER_FAIL_DIR")

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	logger.Info("greeter listening", "instance", s.instance, "addr", ln.Addr().String())

	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(s.endStreams) // Shutdown does not track hijacked connections
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stop() // a second signal now ends the process at once

	logger.Info("greeter stopping", "instance", s.instance)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("greeter: requests still in flight after the shutdown timeout; closing them",
			"instance", s.instance, "timeout", shutdownTimeout)
		_ = srv.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	s.close()
	return nil
}

// listenAddr is the address to listen on: MICRO_APP_ADDR, else 127.0.0.1:$PORT, else
// 127.0.0.1:8081.
func listenAddr(getenv func(string) string) string {
	if a := getenv("MICRO_APP_ADDR"); a != "" {
		return a
	}
	if p := getenv("PORT"); p != "" {
		return net.JoinHostPort("127.0.0.1", p)
	}
	return "127.0.0.1:8081"
}

// instanceName is MICRO_INSTANCE, else hostname-pid.
func instanceName(getenv func(string) string) string {
	if n := getenv("MICRO_INSTANCE"); n != "" {
		return n
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "greeter"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// failMode reads GREETER_FAIL: "1" (or any true value of strconv.ParseBool) starts the
// greeter failing.
func failMode(getenv func(string) string) (bool, error) {
	v := getenv("GREETER_FAIL")
	if v == "" {
		return false, nil
	}
	fail, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("GREETER_FAIL=%q: want 1, 0, true or false", v)
	}
	return fail, nil
}
