package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/microhost/micro/runtime/transport"
)

const (
	// streamDialGrace is how much longer than the budget (-timeout) micro call --stream
	// waits for the stream to open, so that the ingress's own answer (a 504) wins.
	streamDialGrace = time.Second
	// streamWriteTimeout bounds sending one message to a peer that stopped reading.
	streamWriteTimeout = 30 * time.Second
	// streamReadLimit bounds one message received.
	streamReadLimit = 16 << 20
	// streamLineLimit bounds one line of stdin, which is one message.
	streamLineLimit = 16 << 20
)

// streamFlags are the flags of micro call --stream.
type streamFlags struct {
	stream bool
	idle   time.Duration
}

func (f *streamFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.stream, "stream", false, "open a stream (a WebSocket) to ENDPOINT: send each MESSAGE, or each line of stdin, and print each reply")
	fs.DurationVar(&f.idle, "idle", time.Second, "with -stream: once the input has ended, close the stream after this long with no reply")
}

// streamCall is one micro call --stream.
type streamCall struct {
	base              string // the ingress's base URL, http://host:port
	service, endpoint string
	messages          []string // the messages to send; nil reads them from stdin, a line each
	timeout           time.Duration
	idle              time.Duration
	verbose           bool
}

// callStreamCmd runs micro call --stream with the parsed flags of call.
func callStreamCmd(ctx context.Context, fs *flag.FlagSet, ing *ingressFlags, sf *streamFlags, timeout time.Duration, verbose bool, stdin io.Reader, stdout, stderr io.Writer) error {
	if fs.NArg() < 2 {
		fs.Usage()
		return errUsage
	}
	if sf.idle <= 0 {
		return fmt.Errorf("-idle %s: want a positive duration", sf.idle)
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	sc := streamCall{
		base:     base,
		service:  fs.Arg(0),
		endpoint: fs.Arg(1),
		timeout:  timeout,
		idle:     sf.idle,
		verbose:  verbose,
	}
	if fs.NArg() > 2 {
		sc.messages = fs.Args()[2:]
	}
	return sc.run(ctx, stdin, stdout, stderr)
}

// url is the stream's WebSocket URL: ws://{ingress}/{service}/{endpoint}.
func (sc *streamCall) url() string {
	u := sc.base
	switch {
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + strings.TrimPrefix(u, "http://")
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + strings.TrimPrefix(u, "https://")
	}
	return u + "/" + sc.service + "/" + sc.endpoint
}

// run opens the stream, sends the messages while printing the replies as they come, and
// closes the stream when the server does, or when the input has ended and no reply came
// for sc.idle.
func (sc *streamCall) run(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	name := sc.service + "." + sc.endpoint
	c, err := sc.dial(ctx, stderr)
	if err != nil {
		return err
	}
	c.SetReadLimit(streamReadLimit)

	// The reader prints each message on its own line as it arrives; readDone gets the
	// error that ended the stream. Every return below waits for it, so the reader never
	// writes to stdout after run returns.
	var received atomic.Int64
	activity := make(chan struct{}, 1)
	readDone := make(chan error, 1)
	go func() {
		for {
			_, data, err := c.Read(context.Background()) // a cancelled context would drop the connection
			if err != nil {
				readDone <- err
				return
			}
			received.Add(1)
			if len(data) == 0 || data[len(data)-1] != '\n' {
				data = append(data, '\n')
			}
			_, _ = stdout.Write(data)
			select {
			case activity <- struct{}{}:
			default:
			}
		}
	}()
	var readErr error
	readEnded := false
	waitReader := func() error {
		if !readEnded {
			readErr, readEnded = <-readDone, true
		}
		return readErr
	}
	defer func() {
		c.CloseNow()
		waitReader()
	}()

	// The input: the arguments, or the lines of stdin. A stdin that never ends keeps its
	// reading goroutine blocked after run returns; the process is about to exit then.
	done := make(chan struct{})
	defer close(done)
	inputs, inputErr := sc.feed(stdin, done)

	sent := 0
	summary := func() {
		if sc.verbose {
			fmt.Fprintf(stderr, "sent %d message(s), received %d\n", sent, received.Load())
		}
	}
	interrupted := func() error {
		_ = c.Close(websocket.StatusGoingAway, "micro call interrupted")
		waitReader()
		summary()
		return fmt.Errorf("stream to %s: %w", name, ctx.Err())
	}
	// Send until the input ends or the stream does.
	for inputs != nil {
		select {
		case msg, ok := <-inputs:
			if !ok {
				inputs = nil
				break
			}
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), streamWriteTimeout)
			err := c.Write(wctx, websocket.MessageText, []byte(msg))
			cancel()
			if err != nil {
				c.CloseNow()
				if rerr := waitReader(); websocket.CloseStatus(rerr) != -1 {
					summary()
					return sc.ended(rerr)
				}
				summary()
				return fmt.Errorf("sending message %d to %s: %w", sent+1, name, err)
			}
			sent++
		case err := <-readDone:
			readErr, readEnded = err, true
			summary()
			return sc.ended(err)
		case <-ctx.Done():
			return interrupted()
		}
	}
	if err := <-inputErr; err != nil {
		_ = c.Close(websocket.StatusNormalClosure, "")
		waitReader()
		summary()
		return fmt.Errorf("reading the messages from stdin: %w", err)
	}

	// The input has ended: wait for the replies until the server closes, or until none
	// came for sc.idle.
	idle := time.NewTimer(sc.idle)
	defer idle.Stop()
	for {
		select {
		case <-activity:
			idle.Reset(sc.idle)
		case err := <-readDone:
			readErr, readEnded = err, true
			summary()
			return sc.ended(err)
		case <-idle.C:
			cerr := c.Close(websocket.StatusNormalClosure, "")
			rerr := waitReader()
			summary()
			if cerr != nil {
				if s := websocket.CloseStatus(rerr); s != -1 && s != websocket.StatusNormalClosure {
					return sc.ended(rerr) // the server closed with an error as we closed
				}
				return fmt.Errorf("closing the stream to %s: %w", name, cerr)
			}
			return nil
		case <-ctx.Done():
			return interrupted()
		}
	}
}

// dial opens the stream. A refused upgrade prints the ingress's answer (micro's JSON
// error) to stderr.
func (sc *streamCall) dial(ctx context.Context, stderr io.Writer) (*websocket.Conn, error) {
	name := sc.service + "." + sc.endpoint
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	if sc.timeout > 0 {
		opts.HTTPHeader.Set(transport.HeaderTimeout, sc.timeout.String())
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sc.timeout+streamDialGrace)
		defer cancel()
	}
	c, resp, err := websocket.Dial(ctx, sc.url(), opts)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(resp.Body)
			if len(body) > 0 {
				stderr.Write(body)
				if body[len(body)-1] != '\n' {
					fmt.Fprintln(stderr)
				}
			}
			return nil, fmt.Errorf("opening a stream to %s: the ingress answered %s", name, resp.Status)
		}
		return nil, fmt.Errorf("opening a stream to %s: %w (is micro running? start it with 'micro run')", name, err)
	}
	if sc.verbose {
		fmt.Fprintf(stderr, "%s from node %s\n", resp.Status, resp.Header.Get(transport.HeaderNode))
	}
	return c, nil
}

// feed sends the messages to send on inputs, then closes it and sends the error that ended
// the input (nil at its end) on the returned error channel. It stops early when done closes.
func (sc *streamCall) feed(stdin io.Reader, done <-chan struct{}) (<-chan string, <-chan error) {
	inputs := make(chan string)
	errc := make(chan error, 1)
	go func() {
		defer close(inputs)
		send := func(m string) bool {
			select {
			case inputs <- m:
				return true
			case <-done:
				return false
			}
		}
		if sc.messages != nil {
			for _, m := range sc.messages {
				if !send(m) {
					break
				}
			}
			errc <- nil
			return
		}
		s := bufio.NewScanner(stdin)
		s.Buffer(make([]byte, 0, 64<<10), streamLineLimit)
		for s.Scan() {
			if !send(s.Text()) {
				break
			}
		}
		errc <- s.Err()
	}()
	return inputs, errc
}

// ended turns the error that ended the stream on the server's side into run's result: nil
// for a normal close, else an error with the close status and reason.
func (sc *streamCall) ended(err error) error {
	name := sc.service + "." + sc.endpoint
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce) && ce.Code == websocket.StatusNormalClosure:
		return nil
	case errors.As(err, &ce):
		reason := ce.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return fmt.Errorf("%s closed the stream with status %d (%s): %s", name, int(ce.Code), ce.Code, reason)
	default:
		return fmt.Errorf("the stream to %s broke without a close: %w", name, err)
	}
}
