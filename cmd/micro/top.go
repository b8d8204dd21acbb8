package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/status"
)

// topOrder returns the order of `micro top`'s routes that -sort names, before their names.
func topOrder(by string) (func(a, b status.Route) int, bool) {
	switch by {
	case "rps":
		return func(a, b status.Route) int { return cmp.Compare(b.RPS, a.RPS) }, true
	case "success":
		return func(a, b status.Route) int { return cmpNil(a.Success, b.Success, 1) }, true
	case "p50":
		return func(a, b status.Route) int { return cmpNil(a.P50, b.P50, -1) }, true
	case "p99":
		return func(a, b status.Route) int { return cmpNil(a.P99, b.P99, -1) }, true
	case "name":
		return func(a, b status.Route) int { return 0 }, true
	}
	return nil, false
}

// topOptions are what `micro top` was asked to show, and how.
type topOptions struct {
	base     string // the ingress's base URL
	interval time.Duration
	sort     string // as topOrder takes it
	limit    int    // at most this many routes; 0 for all
	json     bool
	live     bool // redraw in place every interval, until ctx is done
}

// topCmd is `micro top`: a live table of what a running micro calls, from GET /status.
func topCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("top", "top [flags]\n\n"+
		"Shows what a running micro is calling, as a table of its routes (service, endpoint and node)\n"+
		"with their requests per second, success rate, p50 and p99 latency, and retries and hedges\n"+
		"per second, over the last seconds (the window). Beneath it are the nodes that are ejected\n"+
		"or whose breaker is not closed. On a terminal the table is redrawn every -interval until\n"+
		"Ctrl-C; otherwise, or with -once, it is printed once.", stderr)
	var ing ingressFlags
	ing.register(fs)
	interval := fs.Duration("interval", time.Second, "how often to read micro's status when redrawing")
	sortBy := fs.String("sort", "rps", "order of the routes: rps (busiest first), success (worst first), p50 or p99 (slowest first), name")
	limit := fs.Int("limit", 0, "show at most this many routes (0: all)")
	once := fs.Bool("once", false, "print the table once and exit, even on a terminal")
	asJSON := fs.Bool("json", false, "print micro's status snapshot as JSON (once a -interval when redrawing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "micro top: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	if _, ok := topOrder(*sortBy); !ok {
		fmt.Fprintf(stderr, "micro top: -sort %q: want rps, success, p50, p99 or name\n", *sortBy)
		return errUsage
	}
	if *interval < 100*time.Millisecond {
		fmt.Fprintf(stderr, "micro top: -interval %v: want 100ms or more\n", *interval)
		return errUsage
	}
	if *limit < 0 {
		fmt.Fprintf(stderr, "micro top: -limit %d: want 0 or more\n", *limit)
		return errUsage
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	return runTop(ctx, topOptions{
		base: base, interval: *interval, sort: *sortBy, limit: *limit, json: *asJSON,
		live: !*once && isTerminal(stdout),
	}, stdout)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ANSI sequences that redraw a terminal in place.
const (
	ansiHome      = "\x1b[H"  // cursor to the top left
	ansiClearLine = "\x1b[K"  // clear to the end of the line
	ansiClearDown = "\x1b[J"  // clear from the cursor to the end of the screen
	ansiClear     = "\x1b[2J" // clear the screen
)

// runTop shows micro's status as o says: once, or redrawn every o.interval until ctx is
// done. Once, an unreachable micro is an error; redrawing, it is a line that says so, and
// runTop keeps trying.
func runTop(ctx context.Context, o topOptions, stdout io.Writer) error {
	if !o.live {
		snap, err := fetchStatus(ctx, o.base, 10*time.Second)
		if err == nil && snap.Window == 0 {
			// Nobody looked for a while, so micro has no rates yet: look again an interval
			// later, for rates over it.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(o.interval):
			}
			snap, err = fetchStatus(ctx, o.base, 10*time.Second)
		}
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) { // no answer: say why, without repeating the URL
				return fmt.Errorf("cannot reach micro at %s: %w", o.base, ue.Err)
			}
			return fmt.Errorf("micro at %s: %w", o.base, err)
		}
		if o.json {
			return json.NewEncoder(stdout).Encode(snap)
		}
		var buf bytes.Buffer
		writeTop(&buf, snap, o)
		_, err = stdout.Write(buf.Bytes())
		return err
	}
	if !o.json {
		if _, err := io.WriteString(stdout, ansiClear); err != nil {
			return err
		}
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	for {
		snap, err := fetchStatus(ctx, o.base, max(o.interval, 2*time.Second))
		if ctx.Err() != nil {
			return nil // Ctrl-C
		}
		var buf bytes.Buffer
		switch {
		case err != nil:
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			fmt.Fprintf(&buf, "%s  waiting for micro at %s: %s\n", time.Now().Format(time.TimeOnly), clean(o.base), clean(err.Error()))
		case o.json:
			if err := json.NewEncoder(&buf).Encode(snap); err != nil {
				return err
			}
		default:
			writeTop(&buf, snap, o)
		}
		out := buf.Bytes()
		if !o.json {
			out = redraw(out)
		}
		if _, err := stdout.Write(out); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// redraw turns text into a redraw of the terminal in place: from the top left, each line
// cleared to its end, and the rest of the screen cleared, so that nothing flickers.
func redraw(text []byte) []byte {
	var b bytes.Buffer
	b.WriteString(ansiHome)
	for line := range bytes.Lines(text) {
		b.Write(bytes.TrimSuffix(line, []byte("\n")))
		b.WriteString(ansiClearLine + "\n")
	}
	b.WriteString(ansiClearDown)
	return b.Bytes()
}

// fetchStatus gets the snapshot of the micro at base, within timeout. A *url.Error means
// that no answer came.
func fetchStatus(ctx context.Context, base string, timeout time.Duration) (status.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var snap status.Snapshot
	if err := getJSON(ctx, base+server.StatusPath, &snap); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return snap, err
		}
		return snap, fmt.Errorf("GET %s: %w", server.StatusPath, err)
	}
	return snap, nil
}

// writeTop writes the header line, the routes table and the nodes out of rotation.
func writeTop(w *bytes.Buffer, snap status.Snapshot, o topOptions) {
	routes := slices.Clone(snap.Routes)
	by, _ := topOrder(o.sort)
	slices.SortStableFunc(routes, func(a, b status.Route) int {
		if c := by(a, b); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Node, b.Node))
	})
	shown := routes
	if o.limit > 0 && len(shown) > o.limit {
		shown = shown[:o.limit]
	}

	fmt.Fprintf(w, "micro %s  health %s  %s  window %.0fs  %d routes", clean(snap.Instance), clean(snap.Health),
		snap.Time.Local().Format(time.TimeOnly), snap.Window, len(routes))
	if len(shown) < len(routes) {
		fmt.Fprintf(w, " (%d shown)", len(shown))
	}
	w.WriteString("\n")
	for _, e := range snap.Errors {
		fmt.Fprintf(w, "  %s\n", clean(e))
	}
	w.WriteString("\n")

	if len(routes) == 0 {
		w.WriteString("no calls in the window\n")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tENDPOINT\tNODE\tRPS\tSUCCESS\tP50 MS\tP99 MS\tRETRIES/S\tHEDGES/S")
		for _, r := range shown {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%.1f\t%.1f\n", clean(r.Service), clean(r.Endpoint), clean(r.Node),
				r.RPS, percent(r.Success), millis(r.P50), millis(r.P99), r.Retries, r.Hedges)
		}
		tw.Flush()
	}

	var out [][4]string
	for _, s := range snap.Services {
		for _, n := range s.Nodes {
			eject := ""
			switch {
			case n.Ejected:
				eject = "ejected"
			case len(n.EjectedEndpoints) > 0:
				eject = "ejected for " + strings.Join(n.EjectedEndpoints, ", ")
			}
			if eject != "" && n.EjectedFor > 0 {
				eject += fmt.Sprintf(" (%.0fs left)", n.EjectedFor)
			}
			if eject == "" && (n.Breaker == "" || n.Breaker == "closed") {
				continue
			}
			out = append(out, [4]string{s.Name, n.ID, cmp.Or(eject, "-"), cmp.Or(n.Breaker, "-")})
		}
	}
	if len(out) > 0 {
		w.WriteString("\nNODES OUT OF ROTATION\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tNODE\tEJECTION\tBREAKER")
		for _, n := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", clean(n[0]), clean(n[1]), clean(n[2]), clean(n[3]))
		}
		tw.Flush()
	}
}

// percent formats a success share as a percentage, "-" when there is none.
func percent(p *float64) string {
	if p == nil {
		return "-"
	}
	if *p < 1 { // round down: 99.996% is not 100%
		return fmt.Sprintf("%.2f%%", float64(int64(*p*10000))/100)
	}
	return "100.00%"
}

// millis formats a latency in milliseconds, "-" when there is none.
func millis(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *p)
}

// cmpNil compares two optional values in order dir (1 ascending, -1 descending), with
// nil last either way.
func cmpNil(a, b *float64, dir int) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return dir * cmp.Compare(*a, *b)
}
