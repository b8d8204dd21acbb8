package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// postLua is wrk's script: every request is POST {"name":"Ada"}, and when the run is
// done it prints one line of wrk's own figures, at full precision, for parse.
const postLua = `wrk.method = "POST"
wrk.body = '{"name":"Ada"}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "bench-proxy requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f non2xx=%.0f connect=%.0f read=%.0f write=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
`

// wrk runs the wrk load generator with postLua.
type wrk struct {
	bin, script    string
	threads, conns int
}

// wrkResult is what one wrk run measured.
type wrkResult struct {
	requests                      int64         // answers received, whatever their status
	took                          time.Duration // how long the run lasted
	p50, p99                      time.Duration // percentiles of wrk's latency distribution
	non2xx                        int64         // answers with a status of 400 or more (wrk counts these)
	connect, read, write, timeout int64         // socket errors
}

func (r wrkResult) rps() float64 {
	if r.took <= 0 {
		return 0
	}
	return float64(r.requests) / r.took.Seconds()
}

func (r wrkResult) errors() int64 {
	return r.non2xx + r.connect + r.read + r.write + r.timeout
}

// errorText is "0", or the errors by kind.
func (r wrkResult) errorText() string {
	if r.errors() == 0 {
		return "0"
	}
	var parts []string
	for _, e := range []struct {
		n    int64
		what string
	}{{r.non2xx, "non-2xx"}, {r.connect, "connect"}, {r.read, "read"}, {r.write, "write"}, {r.timeout, "timeout"}} {
		if e.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", e.n, e.what))
		}
	}
	return strings.Join(parts, ", ")
}

// run loads u for d (whole seconds) and parses the line postLua prints.
func (w wrk) run(u string, d time.Duration) (wrkResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.Command(w.bin, "-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.conns),
		"-d", fmt.Sprintf("%ds", secs), "--latency", "-s", w.script, u)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	r, err := parseWrk(out)
	if err != nil {
		return wrkResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return r, nil
}

// parseWrk reads the "bench-proxy key=value ..." line of wrk's output.
func parseWrk(out []byte) (wrkResult, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "bench-proxy ")
		if !ok {
			continue
		}
		var r wrkResult
		var us struct{ took, p50, p99 int64 }
		fields := map[string]*int64{
			"requests": &r.requests, "duration_us": &us.took, "p50_us": &us.p50, "p99_us": &us.p99,
			"non2xx": &r.non2xx, "connect": &r.connect, "read": &r.read, "write": &r.write, "timeout": &r.timeout,
		}
		for _, kv := range strings.Fields(rest) {
			k, v, _ := strings.Cut(kv, "=")
			p, known := fields[k]
			if !known {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return wrkResult{}, fmt.Errorf("wrk's %s: %w", k, err)
			}
			*p = n
			delete(fields, k)
		}
		if len(fields) > 0 {
			return wrkResult{}, fmt.Errorf("wrk's summary lacks %d of its fields", len(fields))
		}
		r.took, r.p50, r.p99 = time.Duration(us.took)*time.Microsecond, time.Duration(us.p50)*time.Microsecond, time.Duration(us.p99)*time.Microsecond
		return r, nil
	}
	return wrkResult{}, fmt.Errorf("no summary line from wrk's script")
}
