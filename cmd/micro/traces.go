package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/tracing"
)

func tracesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("traces", "traces [flags] [TRACE_ID]\n\n"+
		"Lists the recent traces that a running micro kept (those it sampled: [telemetry] sample_ratio,\n"+
		"or a caller's traceparent), the most recent first, or shows one as a waterfall of its spans.", stderr)
	var ing ingressFlags
	ing.register(fs)
	limit := fs.Int("limit", 20, "list at most this many traces (at most 1000)")
	failed := fs.Bool("failed", false, "list only traces with a failed span")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return errUsage
	}
	base, err := ing.ingress()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	q := url.Values{}
	if fs.NArg() == 1 {
		q.Set("id", fs.Arg(0))
		var t tracing.TraceData
		if err := getJSON(ctx, base+server.TracesPath+"?"+q.Encode(), &t); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(t)
		}
		return waterfall(stdout, t)
	}
	q.Set("limit", strconv.Itoa(*limit))
	if *failed {
		q.Set("failed", "1")
	}
	var list []tracing.TraceData
	if err := getJSON(ctx, base+server.TracesPath+"?"+q.Encode(), &list); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRACE\tENDED\tSPANS\tFAILED\tFIRST SPAN")
	for _, t := range list {
		first := ""
		if len(t.Spans) > 0 {
			s := t.Spans[len(t.Spans)-1] // the outermost span ends last
			first = s.Name + " " + s.Attrs["micro.service"] + "/" + s.Attrs["micro.endpoint"]
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\n", t.ID, t.Last.Local().Format(time.TimeOnly), len(t.Spans), t.Failed, clean(first))
	}
	return tw.Flush()
}

// waterfall prints t's spans in start order, indented under their parents, each with its
// start offset, duration and a bar.
func waterfall(w io.Writer, t tracing.TraceData) error {
	if len(t.Spans) == 0 {
		_, err := fmt.Fprintf(w, "trace %s: no spans\n", t.ID)
		return err
	}
	start, end := t.Spans[0].Start, t.Spans[0].End
	depth := map[string]int{}
	ids := map[string]bool{}
	for _, s := range t.Spans {
		ids[s.Span] = true
		if s.Start.Before(start) {
			start = s.Start
		}
		if s.End.After(end) {
			end = s.End
		}
	}
	spans := slices.Clone(t.Spans)
	slices.SortStableFunc(spans, func(a, b tracing.SpanData) int { return a.Start.Compare(b.Start) })
	for _, s := range spans {
		if ids[s.Parent] {
			depth[s.Span] = depth[s.Parent] + 1
		}
	}
	total := end.Sub(start)
	fmt.Fprintf(w, "trace %s: %d spans, %v\n", t.ID, len(spans), total.Round(time.Microsecond))
	const width = 40
	for _, s := range spans {
		from, d := s.Start.Sub(start), s.End.Sub(s.Start)
		bar := [width]byte{}
		for i := range bar {
			bar[i] = ' '
		}
		if total > 0 {
			a := int(int64(width) * int64(from) / int64(total))
			b := max(a+1, int(int64(width)*int64(from+d)/int64(total)))
			for i := a; i < min(b, width); i++ {
				bar[i] = '='
			}
		}
		mark := ""
		if s.Failed {
			mark = "  FAILED " + s.Status
		}
		label := strings.Repeat("  ", depth[s.Span]) + s.Name
		if n := s.Attrs["micro.node"]; n != "" {
			label += " " + n
		}
		fmt.Fprintf(w, "|%s| %8v +%-8v %s [%s]%s\n", bar[:], d.Round(time.Microsecond), from.Round(time.Microsecond),
			clean(label), clean(s.Service+" "+s.Attrs["micro.service"]), clean(mark))
	}
	return nil
}

// clean makes s safe for a terminal: control characters (which could move the cursor or
// rewrite the screen) and format characters (such as the bidirectional overrides, which
// could make text read other than it is) become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return '?'
		}
		return r
	}, s)
}
