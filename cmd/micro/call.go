package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/transport"
)

// ingressFlags are the flags that find a running micro's ingress.
type ingressFlags struct {
	address string
	config  string
}

func (f *ingressFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&f.address, "address", "", "ingress address of the running micro (default: server.ingress of the config file)")
	fs.StringVar(&f.config, "c", "micro.toml", "config file to read the ingress address from")
}

// ingress returns the base URL of the ingress.
func (f *ingressFlags) ingress() (string, error) {
	addr := f.address
	if addr == "" {
		l := config.Loader{Path: f.config, Env: os.Environ()}
		cfg, err := l.Load()
		if err != nil {
			if _, statErr := os.Stat(f.config); statErr == nil || f.config != "micro.toml" {
				return "", fmt.Errorf("finding the ingress: %w (or pass --address)", err)
			}
			def := config.Default()
			cfg = &def
		}
		addr = cfg.Server.Ingress
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return strings.TrimSuffix(addr, "/"), nil
}

func callCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("call", "call [flags] SERVICE ENDPOINT [JSON | -]\n       micro call --stream [flags] SERVICE ENDPOINT [MESSAGE...]\n\n"+
		"Calls ENDPOINT of SERVICE through the ingress of a running micro and prints the reply.\n"+
		"The body is JSON from the argument, or from stdin when it is '-'; it defaults to {}.\n\n"+
		"With --stream, it opens a stream to ENDPOINT (a WebSocket to ws://INGRESS/SERVICE/ENDPOINT),\n"+
		"sends each MESSAGE, or else each line of stdin, as a text message, and prints each reply on\n"+
		"its own line as it arrives. Once the input has ended, it closes the stream when no reply\n"+
		"came for -idle, or ends when the server closes it; a close with an error status exits 1.\n"+
		"-timeout bounds opening the stream.", stderr)
	var ing ingressFlags
	ing.register(fs)
	timeout := fs.Duration("timeout", 0, "the call's budget, sent as Micro-Timeout (default: client.timeout of the running micro)")
	verbose := fs.Bool("v", false, "print the status and the node that answered to stderr")
	var sf streamFlags
	sf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if sf.stream {
		return callStreamCmd(ctx, fs, &ing, &sf, *timeout, *verbose, stdin, stdout, stderr)
	}
	if fs.NArg() < 2 || fs.NArg() > 3 {
		fs.Usage()
		return errUsage
	}
	service, endpoint := fs.Arg(0), fs.Arg(1)
	body := []byte("{}")
	switch arg := fs.Arg(2); arg {
	case "":
	case "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return fmt.Errorf("reading the body from stdin: %w", err)
		}
		body = b
	default:
		body = []byte(arg)
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+service+"/"+endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the call: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if *timeout > 0 {
		req.Header.Set(transport.HeaderTimeout, timeout.String())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("calling %s.%s: %w (is micro running? start it with 'micro run')", service, endpoint, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the reply: %w", err)
	}
	if *verbose {
		fmt.Fprintf(stderr, "%s from node %s after %s attempt(s)\n", resp.Status, resp.Header.Get(transport.HeaderNode), resp.Header.Get(transport.HeaderAttempts))
	}
	w := stdout
	if resp.StatusCode >= 300 {
		w = stderr
	}
	w.Write(out)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		fmt.Fprintln(w)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s.%s answered %s", service, endpoint, resp.Status)
	}
	return nil
}

func servicesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("services", "services [flags]\n\nLists the services in the registry of a running micro, with their nodes.", stderr)
	var ing ingressFlags
	ing.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/services", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("listing services: %w (is micro running? start it with 'micro run')", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the service list: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("listing services: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	if *asJSON {
		_, err := stdout.Write(raw)
		return err
	}
	var list []*registry.Service
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("decoding the service list: %w", err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVERSION\tNODE\tADDRESS\tMETADATA")
	for _, s := range list {
		for _, n := range s.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, n.Version, n.ID, n.Address, formatMetadata(n.Metadata))
		}
	}
	return tw.Flush()
}

func formatMetadata(md map[string]string) string {
	keys := slices.Sorted(maps.Keys(md))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + md[k]
	}
	return strings.Join(parts, ",")
}

// ingressRequest sends req to micro's ingress and, when the answer has status want,
// decodes its JSON into out (unless out is nil). Another answer is micro's error, or its
// status and body when it is not one.
func ingressRequest(req *http.Request, want int, out any) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%w (is micro running? start it with 'micro run')", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != want {
		if e, ok := callerr.Parse(raw); ok {
			return e
		}
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	return nil
}

// getJSON gets url from micro's ingress and decodes its JSON answer into out.
func getJSON(ctx context.Context, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return ingressRequest(req, http.StatusOK, out)
}
