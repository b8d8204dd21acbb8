package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
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
// request, id names the listener in its errors, and maxBody gives the current limit on
// request bodies (server.max_body, which applies live).
func (r *Runtime) fastServer(h fasthttp.RequestHandler, id string, s config.Server, maxBody func() int) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                       h,
		ReadTimeout:                   s.HeaderTimeout,
		WriteTimeout:                  s.WriteTimeout,
		IdleTimeout:                   s.IdleTimeout,
		ReadBufferSize:                fastReadBuffer,
		MaxRequestBodySize:            maxBody(),
		DisablePreParseMultipartForm:  true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        fastLogger{r.logger},
		// Once the headers are in, the body has body_timeout, and the current limit.
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: s.BodyTimeout, MaxRequestBodySize: maxBody()}
		},
		ErrorHandler: func(c *fasthttp.RequestCtx, err error) {
			e := badRequest(id, err, s, maxBody())
			c.Response.Reset()
			c.SetStatusCode(e.Code)
			c.Response.Header.SetContentType("application/json")
			c.SetBody(append(e.JSON(), '\n'))
			c.SetConnectionClose()
		},
	}
}

// badRequest is the answer to a request that fasthttp could not read.
func badRequest(id string, err error, s config.Server, maxBody int) *callerr.Error {
	var ne net.Error
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return callerr.New(id, http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes (server.max_body)", maxBody)
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
	l.log.Debug("fasthttp: " + fmt.Sprintf(format, args...))
}

// serveIngress serves the ingress on ln: plain HTTP/1.1 requests on the fast path, upgrades
// (streams) and HTTP/2 on net/http.
func (r *Runtime) serveIngress(ln net.Listener) {
	fast, std := server.Split(ln, r.cfg.Server.HeaderTimeout, maxHeaderBytes)
	r.goBackground(func() {
		if err := r.fastIngress.Serve(fast); err != nil && !errors.Is(err, net.ErrClosed) {
			r.logger.Error("ingress server stopped", "err", err)
		}
	})
	r.goBackground(func() {
		if err := r.ingressSrv.Serve(std); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			r.logger.Error("ingress server stopped", "err", err)
		}
	})
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
	fast, std := server.Split(ln, s.HeaderTimeout, maxHeaderBytes)
	stdLn, err := ht.Serve(std)
	if err != nil {
		ln.Close()
		return nil, err
	}
	fs := r.fastServer(r.inbound.ServeFast, server.InboundID, s, r.maxBody)
	go func() { _ = fs.Serve(fast) }()
	return &splitListener{Listener: stdLn, fast: fs, drain: s.DrainTimeout}, nil
}

// splitListener is an inbound HTTP listener: streams are accepted as a transport.Listener
// does, and plain calls are served by fast.
type splitListener struct {
	transport.Listener
	fast  *fasthttp.Server
	drain time.Duration
}

// Close stops both: calls in flight on the fast path have the drain timeout to finish.
func (l *splitListener) Close() error {
	err := l.Listener.Close()
	ctx, cancel := context.WithTimeout(context.Background(), l.drain)
	defer cancel()
	if ferr := l.fast.ShutdownWithContext(ctx); ferr != nil && err == nil && !errors.Is(ferr, context.DeadlineExceeded) {
		err = ferr
	}
	return err
}

// maxBody is the current limit on request bodies.
func (r *Runtime) maxBody() int {
	return int(r.maxBodyNow.Load())
}
