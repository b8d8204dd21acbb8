// Package browsertest drives a headless Debian Chromium from Go tests, through
// chromedp, so that an end-to-end test can load a page that micro serves on
// loopback (such as the dashboard at /ui of the ingress) and check what a user
// would see.
//
// A test calls [Start] once, then [Browser.Navigate], [Browser.WaitText],
// [Browser.Text] and [Browser.Screenshot]. The browser records the console
// errors of the page and its network requests, so that a test can check with
// [Browser.AssertClean] that the page logged no error, had no failed request,
// and fetched nothing from outside loopback.
//
// The browser is /usr/bin/chromium from the Debian package chromium, which
// tools/chromium/install.sh installs (.ci/run runs it, and Start does when the
// browser is missing). Start fails the test, and does not skip it, when it cannot.
//
// Every helper reports a failure with t.Fatalf, so call them from the
// goroutine of the test only.
package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is where the Debian package chromium installs the browser;
// tools/chromium/install.sh installs it when it is missing.
const ChromiumPath = "/usr/bin/chromium"

// The bounds of the browser's operations. A test can lower them on a Browser
// with [Browser.SetActionTimeout]; none of them is a fixed sleep.
const (
	// StartTimeout bounds the start of the browser and the opening of its tab.
	StartTimeout = 30 * time.Second
	// DefaultActionTimeout bounds one action, such as a navigation, a read of
	// the DOM or a screenshot.
	DefaultActionTimeout = 20 * time.Second
	// CloseTimeout bounds the graceful close of the browser at the test's
	// cleanup; after it the browser process is killed.
	CloseTimeout = 10 * time.Second
)

// pollInterval is how often WaitText reads the DOM again.
const pollInterval = 20 * time.Millisecond

// outputLimit is how much of the browser's own output a Browser keeps, to log
// at the end of a failed test.
const outputLimit = 64 << 10

// Browser is one headless Chromium with one tab, started by [Start] for one
// test and closed at the test's cleanup. Its methods must be called from the
// test's goroutine.
type Browser struct {
	t             testing.TB
	ctx           context.Context // the tab's chromedp context
	actionTimeout time.Duration
	output        *tailBuffer

	mu       sync.Mutex
	closed   bool                         // set at cleanup: t.Logf is no longer allowed
	console  []string                     // console errors, uncaught exceptions, error log entries
	requests []Request                    // every request, in order
	byID     map[network.RequestID]string // request id -> URL
	failed   []FailedRequest
}

// Request is one network request of the page, as the browser reported it.
type Request struct {
	// URL is the URL of the request.
	URL string
	// Type is the kind of resource, such as "Document", "Script", "Fetch",
	// "EventSource" or "WebSocket".
	Type string
}

// FailedRequest is a request of the page that got no response (a network
// error, a block or a cancel) or an HTTP error status.
type FailedRequest struct {
	// URL is the URL of the request.
	URL string
	// Type is the kind of resource, as in [Request].
	Type string
	// Status is the HTTP status (400 or more) of a request that got a response,
	// and 0 for a request that got none.
	Status int
	// Error is the browser's error text for a request that got no response,
	// such as "net::ERR_CONNECTION_REFUSED".
	Error string
	// Canceled is true for a request that the page itself canceled, as when it
	// navigates away while a stream (an EventSource) is open. [Browser.AssertClean]
	// ignores these.
	Canceled bool
}

// String returns the request's URL and what went wrong.
func (f FailedRequest) String() string {
	what := f.Error
	if f.Status != 0 {
		what = fmt.Sprintf("HTTP %d", f.Status)
	}
	if f.Canceled {
		what += " (canceled)"
	}
	return fmt.Sprintf("%s %s: %s", f.Type, f.URL, what)
}

// install runs <repo>/tools/chromium/install.sh, which installs Debian's chromium (as
// root, from Debian's mirror), and fails the test when that fails: the tests that need a
// browser never skip.
func install(t testing.TB) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		script := filepath.Join(dir, "tools", "chromium", "install.sh")
		if _, err := os.Stat(script); err == nil {
			t.Logf("browsertest: %s is missing; installing it with %s", ChromiumPath, script)
			if out, err := exec.Command("bash", script).CombinedOutput(); err != nil {
				t.Fatalf("browsertest: %s: %v\n%s", script, err, out)
			}
			return
		}
		if filepath.Dir(dir) == dir {
			t.Fatalf("browsertest: %s is missing, and there is no tools/chromium/install.sh at or above %s to install it", ChromiumPath, wd)
		}
	}
}

// Start starts a headless Chromium for the test t, with a fresh profile in
// t.TempDir(), and opens one blank tab. The browser is closed at t's cleanup.
//
// When /usr/bin/chromium is missing it installs it with tools/chromium/install.sh,
// and fails the test when it cannot. It runs the browser with the flags that this sandbox needs and no
// others: --headless, --no-sandbox (the tests run as root), --disable-gpu,
// --disable-quic, --no-first-run, --disable-background-networking,
// --disable-component-update, --disable-sync and --user-data-dir. Without the
// flags that turn off background networking, Chromium tries to reach Google's
// hosts, which the closed network refuses.
func Start(t testing.TB) *Browser {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		install(t)
	}
	profile := filepath.Join(t.TempDir(), "chromium-profile")

	b := &Browser{
		t:             t,
		actionTimeout: DefaultActionTimeout,
		output:        &tailBuffer{limit: outputLimit},
		byID:          map[network.RequestID]string{},
	}
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(ChromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
		chromedp.CombinedOutput(b.output),
	)
	ctx, cancel := chromedp.NewContext(allocCtx,
		chromedp.WithListener(b.record),
		chromedp.WithErrorf(b.logf("chromedp error: ")),
		chromedp.WithLogf(b.logf("chromedp: ")),
	)
	b.ctx = ctx

	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(ctx, CloseTimeout)
		err := chromedp.Cancel(cctx) // graceful close, then kill
		ccancel()
		cancel()
		allocCancel() // waits for the browser process to end
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("browsertest: closing chromium: %v", err)
		}
		if t.Failed() {
			if out := b.output.String(); out != "" {
				t.Logf("browsertest: chromium's output (last %d bytes at most):\n%s", outputLimit, out)
			}
		}
	})

	// The first Do starts the browser and binds it to ctx, so it must not get
	// a context with a deadline: bound it from outside instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("browsertest: starting %s: %v\n%s", ChromiumPath, err, b.output.String())
		}
	case <-time.After(StartTimeout):
		cancel()
		<-started
		t.Fatalf("browsertest: %s did not start within %v\n%s", ChromiumPath, StartTimeout, b.output.String())
	}
	return b
}

// SetActionTimeout sets the bound of each later action of b (a navigation, a
// read of the DOM, a screenshot). The default is [DefaultActionTimeout].
func (b *Browser) SetActionTimeout(d time.Duration) {
	b.actionTimeout = d
}

// Context returns the chromedp context of b's tab, for a chromedp action that
// the helpers do not cover, such as a click. Bound the action with a context
// derived from it (context.WithTimeout); do not cancel the context itself.
func (b *Browser) Context() context.Context {
	return b.ctx
}

// Navigate loads url in the tab and waits for the page's load event. It fails
// the test when the page cannot be loaded.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, b.actionTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("browsertest: navigate to %s: %v", url, err)
	}
}

// textResult is what the page reports about the first element that a CSS
// selector matches.
type textResult struct {
	Found bool   `json:"found"`
	Text  string `json:"text"`
	Error string `json:"error"`
}

// readText reads the text of the first element that the CSS selector sel
// matches: its rendered text (innerText), or its textContent for an element
// that has no innerText, such as an SVG element.
func (b *Browser) readText(ctx context.Context, sel string) (textResult, error) {
	quoted, err := json.Marshal(sel)
	if err != nil {
		return textResult{}, err
	}
	expr := `(() => {
  let el;
  try { el = document.querySelector(` + string(quoted) + `); }
  catch (e) { return {found: false, text: "", error: String(e)}; }
  if (!el) return {found: false, text: "", error: ""};
  const text = el.innerText ?? el.textContent ?? "";
  return {found: true, text: String(text), error: ""};
})()`
	return chromedp.Run(ctx, chromedp.Evaluate[textResult](expr))
}

// Text returns the rendered text (innerText) of the first element that the CSS
// selector matches. It fails the test when no element matches.
func (b *Browser) Text(selector string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, b.actionTimeout)
	defer cancel()
	res, err := b.readText(ctx, selector)
	switch {
	case err != nil:
		b.t.Fatalf("browsertest: text of %q: %v", selector, err)
	case res.Error != "":
		b.t.Fatalf("browsertest: selector %q: %s", selector, res.Error)
	case !res.Found:
		b.t.Fatalf("browsertest: no element matches %q", selector)
	}
	return res.Text
}

// WaitText waits until the rendered text of the first element that the CSS
// selector matches contains substring, and returns that text. It reads the
// DOM again every few milliseconds, so it returns as soon as the page shows
// the text, and it fails the test, with the last text it saw and the page's
// console errors, when the text has not appeared within the given time. An
// element that is not there yet, and a page that is still loading, count as
// "not yet".
func (b *Browser) WaitText(selector, substring string, within time.Duration) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, within)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	last := "no element matched yet"
	for {
		res, err := b.readText(ctx, selector)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				last = "error: " + err.Error() // for example a navigation in progress
			}
		case res.Error != "":
			b.t.Fatalf("browsertest: selector %q: %s", selector, res.Error)
		case res.Found && strings.Contains(res.Text, substring):
			return res.Text
		case res.Found:
			last = fmt.Sprintf("text %q", res.Text)
		default:
			last = "no element matched"
		}
		select {
		case <-ctx.Done():
			b.t.Fatalf("browsertest: %q did not show %q within %v; last: %s; console errors: %q",
				selector, substring, within, last, b.ConsoleErrors())
			return ""
		case <-tick.C:
		}
	}
}

// Screenshot writes a PNG of the whole page, beyond the viewport, to path, and
// creates path's directory when it is missing.
func (b *Browser) Screenshot(path string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, b.actionTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 means PNG
	if err != nil {
		b.t.Fatalf("browsertest: screenshot: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.t.Fatalf("browsertest: screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatalf("browsertest: screenshot: %v", err)
	}
}

// sync makes one round trip to the tab. The browser sends an event before the
// reply to a later command, and the listener sees it before the command
// returns, so after sync the records hold every event sent before it.
func (b *Browser) sync() {
	ctx, cancel := context.WithTimeout(b.ctx, b.actionTimeout)
	defer cancel()
	// An error here (a closed tab) only means that no more events come.
	_, _ = chromedp.Run(ctx, chromedp.Evaluate[int](`0`))
}

// ConsoleErrors returns the errors that the page reported so far, in order:
// calls of console.error and failed console.assert, uncaught exceptions and
// unhandled promise rejections, and the browser's error log entries (such as
// "Failed to load resource"). Each is one line of text that starts with its
// kind.
func (b *Browser) ConsoleErrors() []string {
	b.sync()
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// Requests returns every network request of the page so far, in order,
// including those of earlier pages of the tab.
func (b *Browser) Requests() []Request {
	b.sync()
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Request(nil), b.requests...)
}

// FailedRequests returns the requests of the page so far that got no response
// or an HTTP error status (400 or more), in order.
func (b *Browser) FailedRequests() []FailedRequest {
	b.sync()
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]FailedRequest(nil), b.failed...)
}

// NonLoopbackRequests returns the URLs of the requests so far that went to a
// host other than loopback (127.0.0.0/8, ::1 or localhost). A URL with no
// host, such as data:, blob: or about:blank, is not a request to the outside
// and is left out.
func (b *Browser) NonLoopbackRequests() []string {
	var out []string
	for _, r := range b.Requests() {
		if !IsLoopbackURL(r.URL) {
			out = append(out, r.URL)
		}
	}
	return out
}

// AssertClean reports a test error for each console error of the page, each
// failed request that the page did not cancel itself, and each request to a
// host outside loopback, so far.
func (b *Browser) AssertClean() {
	b.t.Helper()
	for _, e := range b.ConsoleErrors() {
		b.t.Errorf("browsertest: console error: %s", e)
	}
	for _, f := range b.FailedRequests() {
		if !f.Canceled {
			b.t.Errorf("browsertest: failed request: %s", f)
		}
	}
	for _, u := range b.NonLoopbackRequests() {
		b.t.Errorf("browsertest: request outside loopback: %s", u)
	}
}

// IsLoopbackURL reports whether rawURL stays on this machine: its host is a
// loopback address (127.0.0.0/8 or ::1) or localhost, or it has no host at
// all, as data:, blob: and about: URLs have. A URL that does not parse is not.
func IsLoopbackURL(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "data", "blob", "about", "javascript":
		return true
	}
	host := u.Hostname()
	if host == "" {
		return u.Scheme == "" // a relative URL; a file: or chrome: URL is not loopback traffic
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// record is the tab's listener. It runs on the loop that reads the browser's
// messages, so it only appends under the lock.
func (b *Browser) record(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			b.console = append(b.console, "console."+string(ev.Type)+": "+argsText(ev.Args)+stackPlace(ev.StackTrace))
		}
	case *runtime.EventExceptionThrown:
		if d := ev.ExceptionDetails; d != nil {
			text := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				text += " " + d.Exception.Description
			}
			b.console = append(b.console, fmt.Sprintf("exception: %s (%s:%d)", text, d.URL, d.LineNumber+1))
		}
	case *log.EventEntryAdded:
		if e := ev.Entry; e != nil && e.Level == log.EntryLevelError {
			place := ""
			if e.URL != "" {
				place = " (" + e.URL + ")"
			}
			b.console = append(b.console, "log."+string(e.Source)+": "+e.Text+place)
		}
	case *network.EventRequestWillBeSent:
		if ev.Request != nil {
			b.byID[ev.RequestID] = ev.Request.URL
			b.requests = append(b.requests, Request{URL: ev.Request.URL, Type: string(ev.Type)})
		}
	case *network.EventWebSocketCreated:
		b.byID[ev.RequestID] = ev.URL
		b.requests = append(b.requests, Request{URL: ev.URL, Type: "WebSocket"})
	case *network.EventResponseReceived:
		if ev.Response != nil && ev.Response.Status >= 400 {
			b.failed = append(b.failed, FailedRequest{URL: ev.Response.URL, Type: string(ev.Type), Status: int(ev.Response.Status)})
		}
	case *network.EventLoadingFailed:
		b.failed = append(b.failed, FailedRequest{
			URL: b.byID[ev.RequestID], Type: string(ev.Type), Error: loadingError(ev), Canceled: ev.Canceled,
		})
	}
}

// loadingError is the error text of a failed load, with the reason of a block.
func loadingError(ev *network.EventLoadingFailed) string {
	text := ev.ErrorText
	if ev.BlockedReason != "" {
		text += " (blocked: " + string(ev.BlockedReason) + ")"
	}
	if ev.CorsErrorStatus != nil {
		text += " (CORS: " + string(ev.CorsErrorStatus.CorsError) + ")"
	}
	return text
}

// argsText joins the arguments of a console call as the console shows them,
// roughly: a string as it is, another value as its JSON or its description.
func argsText(args []*runtime.RemoteObject) string {
	parts := make([]string, 0, len(args))
	for _, a := range args {
		switch {
		case a == nil:
		case len(a.Value) > 0:
			var s string
			if json.Unmarshal(a.Value, &s) == nil {
				parts = append(parts, s)
			} else {
				parts = append(parts, string(a.Value))
			}
		case a.UnserializableValue != "":
			parts = append(parts, string(a.UnserializableValue))
		case a.Description != "":
			parts = append(parts, a.Description)
		default:
			parts = append(parts, string(a.Type))
		}
	}
	return strings.Join(parts, " ")
}

// stackPlace is " (url:line)" of the top frame of a stack, or "".
func stackPlace(st *runtime.StackTrace) string {
	if st == nil || len(st.CallFrames) == 0 || st.CallFrames[0] == nil {
		return ""
	}
	f := st.CallFrames[0]
	return fmt.Sprintf(" (%s:%d)", f.URL, f.LineNumber+1)
}

// logf returns a printf func for chromedp that logs to the test until the
// cleanup, and drops the message after it (testing does not allow a log after
// a test ends).
func (b *Browser) logf(prefix string) func(string, ...any) {
	return func(format string, args ...any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.closed {
			b.t.Logf("browsertest: "+prefix+format, args...)
		}
	}
}

// tailBuffer keeps the last limit bytes written to it. The browser's output
// goes to it from chromedp's goroutine, so it has its own lock.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

// Write appends p and drops the oldest bytes beyond the limit.
func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if over := len(w.buf) - w.limit; over > 0 {
		w.buf = append(w.buf[:0], w.buf[over:]...)
	}
	return len(p), nil
}

// String returns what the buffer holds.
func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}
