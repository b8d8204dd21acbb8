package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/transport"
)

// maxHeaderBytes bounds a request's header block on every listener.
const maxHeaderBytes = 64 << 10

// fastReadBuffer is the read buffer of a connection on the HTTP/1.1 path; a request's
// header block must fit it.
const fastReadBuffer = 16 << 10

// fastServer returns the fasthttp server of a listener's HTTP/1.1 path: h serves each
// request, and id names the listener in its errors. A request body up to
// server.InMemoryBody is read whole before h runs; a longer one, or one of unknown length,
// streams, and h enforces server.max_body.
func (r *Runtime) fastServer(h fasthttp.RequestHandler, id string, s config.Server) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                       h,
		ReadTimeout:                   s.HeaderTimeout,
		WriteTimeout:                  s.WriteTimeout,
		IdleTimeout:                   s.IdleTimeout,
		ReadBufferSize:                fastReadBuffer,
		MaxRequestBodySize:            server.InMemoryBody,
		StreamRequestBody:             true,
		DisablePreParseMultipartForm:  true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        fastLogger{r.logger},
		// Once the headers are in, the body has body_timeout.
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: s.BodyTimeout, MaxRequestBodySize: server.InMemoryBody}
		},
		ErrorHandler: func(c *fasthttp.RequestCtx, err error) {
			e := badRequest(id, err, s)
			c.Response.Reset()
			c.SetStatusCode(e.Code)
			c.Response.Header.SetContentType("application/json")
			c.SetBody(append(e.JSON(), '\n'))
			c.SetConnectionClose()
		},
	}
}

// badRequest is the answer to a request that fasthttp could not read.
func badRequest(id string, err error, s config.Server) *callerr.Error {
	var ne net.Error
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return callerr.New(id, http.StatusRequestTimeout, "request not received within %v (server.header_timeout, server.body_timeout)", s.HeaderTimeout+s.BodyTimeout)
	case errors.As(err, &small):
		return callerr.New(id, http.StatusRequestHeaderFieldsTooLarge, "request header larger than %d bytes", fastReadBuffer)
	}
	return callerr.New(id, http.StatusBadRequest, "malformed request: %v", err)
}

// fastLogger passes fasthttp's log lines to micro's log at debug level: they are about
// connections that broke, which the answers already tell.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	if strings.HasPrefix(format, "WARNING: Request.Body() reads the entire stream") {
		return // micro holds only bodies it knows are short (server.InMemoryBody)
	}
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("fasthttp: " + fmt.Sprintf(format, args...))
	}
}

// serveIngress serves the ingress on ln: plain HTTP/1.1 requests on the fast path, upgrades
// (streams) and HTTP/2 on net/http.
func (r *Runtime) serveIngress(ln net.Listener) {
	ls := server.Split(ln, r.cfg.Server.HeaderTimeout, maxHeaderBytes)
	r.goBackground(func() {
		if err := r.fastIngress.Serve(ls.Fast); err != nil && !errors.Is(err, net.ErrClosed) {
			r.logger.Error("ingress server stopped", "err", err)
		}
	})
	for _, l := range []net.Listener{ls.Upgrade, ls.H2} {
		r.goBackground(func() {
			if err := r.ingressSrv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				r.logger.Error("ingress server stopped", "err", err)
			}
		})
	}
}

// h2Server returns a net/http server that speaks HTTP/1.1 (when http1 is set) and HTTP/2
// without TLS, for the connections Split routes to net/http.
func (r *Runtime) h2Server(h http.Handler, s config.Server, http1 bool) *http.Server {
	var p http.Protocols
	p.SetHTTP1(http1)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: s.HeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(r.logger.Handler(), slog.LevelDebug),
		ConnContext:       server.ConnContext,
	}
}

// listenInbound listens where other micro processes reach this one, on transport tr
// (which plugin names). Over HTTP, plain calls come to the inbound server's HTTP/1.1 path
// and streams (upgrades) to the transport's listener; a plugin transport listens its own
// way.
func (r *Runtime) listenInbound(ctx context.Context, tr transport.Transport, plugin string, s config.Server) (transport.Listener, error) {
	ht, ok := tr.(interface {
		Serve(net.Listener) (transport.Listener, error)
	})
	if plugin != "http" || !ok {
		return tr.Listen(ctx, s.Inbound)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.Inbound)
	if err != nil {
		return nil, err
	}
	ls := r.splitInbound(ln, s)
	stdLn, err := ht.Serve(ls.Upgrade)
	if err != nil {
		ln.Close()
		return nil, err
	}
	fs := r.fastServer(r.inbound.ServeFast, server.InboundID, s)
	go func() { _ = fs.Serve(ls.Fast) }()
	hs := r.h2Server(http.HandlerFunc(r.inbound.ServeH2), s, false)
	go func() { _ = hs.Serve(ls.H2) }()
	return &splitListener{Listener: stdLn, fast: fs, h2: hs, drain: s.DrainTimeout}, nil
}

// splitListener is an inbound HTTP listener: streams are accepted as a transport.Listener
// does, plain calls are served by fast, and HTTP/2 calls by h2.
type splitListener struct {
	transport.Listener
	fast  *fasthttp.Server
	h2    *http.Server
	drain time.Duration
}

// Close stops all three: calls in flight on the fast path and over HTTP/2 have the drain
// timeout to finish.
func (l *splitListener) Close() error {
	err := l.Listener.Close()
	ctx, cancel := context.WithTimeout(context.Background(), l.drain)
	defer cancel()
	if ferr := l.fast.ShutdownWithContext(ctx); ferr != nil && err == nil && !errors.Is(ferr, context.DeadlineExceeded) {
		err = ferr
	}
	if herr := l.h2.Shutdown(ctx); herr != nil {
		_ = l.h2.Close()
		if err == nil && !errors.Is(herr, context.DeadlineExceeded) {
			err = herr
		}
	}
	return err
}
