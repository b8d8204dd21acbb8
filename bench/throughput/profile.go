package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/microhost/micro/bench/internal/proc"
)

// profilerSource is added to cmd/micro's package main when it is built for -cpuprofile:
// it serves net/http/pprof on the address in PPROF_ADDR_FOR_BENCH.
const profilerSource = `package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("PPROF_ADDR_FOR_BENCH"); addr != "" {
		go http.ListenAndServe(addr, nil)
	}
}
`

// profiler takes CPU profiles of the micros a run starts. A nil profiler takes none.
type profiler struct {
	dir   string            // where the profiles go
	addrs map[string]string // micro name → its pprof address
}

// newProfiler builds micro into bin with a pprof server, from a file added with
// -overlay, and returns a profiler that writes to dir. tmp holds the overlay.
func newProfiler(tmp, dir, bin string) (*profiler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	src := filepath.Join(tmp, "pprof.go")
	if err := os.WriteFile(src, []byte(profilerSource), 0o644); err != nil {
		return nil, err
	}
	target, err := filepath.Abs(filepath.Join("cmd", "micro", "zz_bench_pprof.go"))
	if err != nil {
		return nil, err
	}
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {target: src}})
	if err != nil {
		return nil, err
	}
	ov := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(ov, overlay, 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-overlay", ov, "-o", bin, "./cmd/micro")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building micro with a profiler (run from the repo root): %w", err)
	}
	return &profiler{dir: dir, addrs: map[string]string{}}, nil
}

// prepare gives the micro called name, about to start, a pprof address of its own.
func (p *profiler) prepare(name string) error {
	if p == nil {
		return nil
	}
	addr, err := proc.FreeAddr()
	if err != nil {
		return err
	}
	p.addrs[name] = addr
	return os.Setenv("PPROF_ADDR_FOR_BENCH", addr)
}

// start profiles every micro for d, a little more than the timed rounds take, and returns a function that, once the timed
// rounds are over, stops the profiles and writes them.
func (p *profiler) start(d time.Duration) func() error {
	if p == nil {
		return func() error { return nil }
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(p.addrs))
	for name, addr := range p.addrs {
		wg.Go(func() {
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds())))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(p.dir, name+".pprof"))
			if err == nil {
				_, err = io.Copy(f, resp.Body)
				err = errors.Join(err, f.Close())
			}
			if err != nil {
				errs <- err
			}
		})
	}
	return func() error {
		wg.Wait()
		close(errs)
		return <-errs
	}
}
