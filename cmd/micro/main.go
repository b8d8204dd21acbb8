// Command micro is a runtime for resilient service-to-service calls.
//
// Usage:
//
//	micro run [-c micro.toml]             start micro on a configuration
//	micro call SERVICE ENDPOINT [JSON]    call a service through a running micro
//	micro publish TOPIC [JSON]            publish a message through a running micro
//	micro messages TOPIC                  list the messages a broker holds for a topic
//	micro services                        list the registered services and their nodes
//	micro wrapper new|build               write or build a WebAssembly wrapper
//	micro ca init|issue                   create a CA for a fleet, and certificates from it
//	micro version                         print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `micro is a runtime for resilient service-to-service calls.

Usage:
  micro run [flags]                         start micro on micro.toml
  micro call [flags] SERVICE ENDPOINT [JSON] call a service through a running micro
  micro call --stream SERVICE ENDPOINT [MSG...]  open a stream (WebSocket) to a service
  micro publish [flags] TOPIC [JSON]        publish a message to every service that subscribes
  micro publish --replay DEAD_TOPIC         republish what a dead-letter topic holds
  micro messages [flags] TOPIC              list the messages a broker holds for a topic
  micro services [flags]                    list registered services and their nodes
  micro traces [flags] [TRACE_ID]           list the recent traces micro kept, or show one
  micro top [flags]                         show live what micro calls: rates, success, latency
  micro wrapper new|build [flags] ARG       write a new wrapper project, or build one to .wasm
  micro ca init|issue [flags]               create a CA for a fleet of machines, and certificates from it
  micro version                             print the version

Run 'micro COMMAND -h' for the flags of a command.
`

// errUsage marks a command line error, for which micro exits 2.
var errUsage = errors.New("usage")

func main() {
	if len(os.Args) > 1 && os.Args[1] == keeperCommand {
		os.Exit(keeperMain(os.Args[2:], os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "micro:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		return runCmd(ctx, rest, stdout, stderr)
	case "call":
		return callCmd(ctx, rest, stdin, stdout, stderr)
	case "services":
		return servicesCmd(ctx, rest, stdout, stderr)
	case "publish":
		return publishCmd(ctx, rest, stdin, stdout, stderr)
	case "traces":
		return tracesCmd(ctx, rest, stdout, stderr)
	case "top":
		return topCmd(ctx, rest, stdout, stderr)
	case "messages":
		return messagesCmd(ctx, rest, stdout, stderr)
	case "wrapper":
		return wrapperCmd(ctx, rest, stdout, stderr)
	case "ca":
		return caCmd(ctx, rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "micro", version)
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "micro: unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
}

// newFlags returns a flag set for a command, printing usage with the command's synopsis.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: micro %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}
