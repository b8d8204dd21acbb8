package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/transport"
)

// headerFlags collects repeated -H "Name: value" flags.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(v string) error {
	name, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q: want \"Name: value\"", v)
	}
	*h = append(*h, v)
	return nil
}

func publishCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("publish", "publish [flags] TOPIC [JSON | -]\n       micro publish --replay [flags] DEAD_TOPIC\n\n"+
		"Publishes a message to TOPIC through the ingress of a running micro (POST /publish/TOPIC) and\n"+
		"prints its id once the broker has stored it. The body is JSON from the argument, or from\n"+
		"stdin when it is '-'; it defaults to {}. Every service that subscribes to TOPIC gets it.\n\n"+
		"With --replay, it publishes each message that DEAD_TOPIC (a dead-letter topic, e.g.\n"+
		"orders.created.dead) holds to the topic it was first published to, with its headers and body\n"+
		"and a new id, and removes it from DEAD_TOPIC. Read what it holds with 'micro messages'.", stderr)
	var ing ingressFlags
	ing.register(fs)
	timeout := fs.Duration("timeout", 0, "the publish's budget, sent as Micro-Timeout (default: client.timeout of the running micro)")
	replay := fs.Bool("replay", false, "republish the messages of a dead-letter topic to their topics")
	var headers headerFlags
	fs.Var(&headers, "H", "a header of the message, \"Name: value\" (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 || (*replay && fs.NArg() != 1) {
		fs.Usage()
		return errUsage
	}
	topic := fs.Arg(0)
	if err := broker.ValidTopic(topic); err != nil {
		return err
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	if *replay {
		return replayDead(ctx, base, topic, *timeout, stdout)
	}
	body := []byte("{}")
	switch arg := fs.Arg(1); arg {
	case "":
	case "-":
		if body, err = io.ReadAll(stdin); err != nil {
			return fmt.Errorf("reading the message from stdin: %w", err)
		}
	default:
		body = []byte(arg)
	}
	h := http.Header{"Content-Type": {"application/json"}}
	for _, kv := range headers {
		k, v, _ := strings.Cut(kv, ":")
		h.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	p, err := publish(ctx, base, topic, h, body, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, p.ID)
	return nil
}

// publish publishes one message through the ingress at base.
func publish(ctx context.Context, base, topic string, h http.Header, body []byte, timeout time.Duration) (*server.Published, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+server.PublishPrefix+url.PathEscape(topic), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building the publish: %w", err)
	}
	req.Header = h
	if timeout > 0 {
		req.Header.Set(transport.HeaderTimeout, timeout.String())
	}
	var p server.Published
	if err := ingressRequest(req, http.StatusAccepted, &p); err != nil {
		return nil, fmt.Errorf("publishing to %s: %w", topic, err)
	}
	return &p, nil
}

// held lists up to limit messages the broker holds for topic.
func held(ctx context.Context, base, topic string, limit int) ([]server.HeldMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s%s%s?limit=%d", base, server.PublishPrefix, url.PathEscape(topic), limit), nil)
	if err != nil {
		return nil, err
	}
	var list []server.HeldMessage
	if err := ingressRequest(req, http.StatusOK, &list); err != nil {
		return nil, fmt.Errorf("reading %s: %w", topic, err)
	}
	return list, nil
}

// replayDead republishes what dead holds to the topics its messages came from.
func replayDead(ctx context.Context, base, dead string, timeout time.Duration, stdout io.Writer) error {
	list, err := held(ctx, base, dead, 1000)
	if err != nil {
		return err
	}
	n := 0
	for _, m := range list {
		to := m.Header[broker.HeaderDeadTopic]
		if broker.ValidTopic(to) != nil {
			return fmt.Errorf("message %s in %s names no topic it came from (header %s %q): is %s a dead-letter topic?", m.ID, dead, broker.HeaderDeadTopic, to, dead)
		}
		h := http.Header{}
		for k, v := range m.Header {
			if !transport.IsMicroHeader(k) {
				h[k] = strings.Split(v, broker.ValueSep)
			}
		}
		body := []byte(m.Body)
		if m.BodyBase64 != nil {
			body = m.BodyBase64
		}
		p, err := publish(ctx, base, to, h, body, timeout)
		if err != nil {
			return fmt.Errorf("replaying %s from %s (%d replayed so far): %w", m.ID, dead, n, err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, base+server.PublishPrefix+url.PathEscape(dead)+"/"+url.PathEscape(m.ID), nil)
		if err != nil {
			return err
		}
		if err := ingressRequest(req, http.StatusNoContent, nil); err != nil {
			return fmt.Errorf("removing %s from %s after replaying it as %s: %w", m.ID, dead, p.ID, err)
		}
		fmt.Fprintf(stdout, "%s -> %s %s\n", m.ID, to, p.ID)
		n++
	}
	fmt.Fprintf(stdout, "replayed %d message(s) from %s\n", n, dead)
	return nil
}

func messagesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("messages", "messages [flags] TOPIC\n\n"+
		"Lists the messages that the broker of a running micro holds for TOPIC, oldest first: those\n"+
		"that a subscribing service has yet to take, or all of them while no service subscribes (a\n"+
		"dead-letter topic, e.g. orders.created.dead). Replay a dead-letter topic with\n"+
		"'micro publish --replay'.", stderr)
	var ing ingressFlags
	ing.register(fs)
	limit := fs.Int("limit", 100, "list at most this many messages (at most 1000)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	topic := fs.Arg(0)
	if err := broker.ValidTopic(topic); err != nil {
		return err
	}
	if *limit < 1 || *limit > 1000 {
		return fmt.Errorf("-limit %d: want 1 to 1000", *limit)
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := held(ctx, base, topic, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPUBLISHED\tBYTES\tWHY (dead letters)")
	for _, m := range list {
		size := len(m.Body) + len(m.BodyBase64)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", m.ID, m.Time.Local().Format(time.DateTime), size, m.Header[broker.HeaderDeadReason])
	}
	return tw.Flush()
}
