// Package consultest runs a real Consul agent for tests: `consul agent -dev` bound to
// loopback, on free ports, with a temporary data directory, stopped when the test ends.
//
// The consul binary is $CONSUL_BIN if set, else <repo>/.cache/bin/consul, else consul on
// PATH; when none exists, Binary builds it with <repo>/tools/consul/build.sh, which takes
// several minutes (CI runs that script before the tests, so they find it built).
package consultest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/internal/tooltest"
)

// nodeName is the Consul node name of every agent this package starts.
const nodeName = "consultest"

// How long an agent may take to elect itself leader, and to exit after SIGTERM.
const (
	readyTimeout = 90 * time.Second
	stopTimeout  = 15 * time.Second
)

// Agent is a running (or stopped) single-node Consul dev agent.
type Agent struct {
	// Addr is host:port of the agent's HTTP API, e.g. "127.0.0.1:41234".
	Addr string
	// Token is the ACL management token when the agent was started WithACL, else "".
	Token string

	t       testing.TB
	bin     string
	args    []string // without -data-dir
	dir     string   // holds the log and a data directory per start
	logPath string
	starts  int

	proc tooltest.Running
}

// Option changes how Start runs the agent.
type Option func(*options)

type options struct {
	aclToken string
}

// WithACL runs the agent with ACLs enabled, denying by default, and token as the
// management token (also used as the agent's own token).
func WithACL(token string) Option {
	return func(o *options) { o.aclToken = token }
}

// Start runs a dev agent and waits until it has elected itself leader and its node is
// healthy. The agent is stopped when the test ends. Start fails the test if the agent does
// not come up.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin := Binary(t)
	return tooltest.Start(t, "consultest", 3, func(dir string, ports []int) (*Agent, error) {
		httpPort, serfPort, serverPort := ports[0], ports[1], ports[2]
		a := &Agent{
			Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
			Token:   o.aclToken,
			t:       t,
			bin:     bin,
			dir:     dir,
			logPath: filepath.Join(dir, "consul.log"),
			args: []string{
				"agent", "-dev",
				"-node=" + nodeName,
				"-bind=127.0.0.1", "-client=127.0.0.1",
				"-http-port=" + strconv.Itoa(httpPort),
				"-serf-lan-port=" + strconv.Itoa(serfPort),
				"-server-port=" + strconv.Itoa(serverPort),
				"-serf-wan-port=-1", "-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
				"-log-level=info",
			},
		}
		if o.aclToken != "" {
			a.args = append(a.args, "-hcl", fmt.Sprintf(
				`acl { enabled = true default_policy = "deny" tokens { initial_management = %q agent = %q } }`,
				o.aclToken, o.aclToken))
		}
		return a, a.start()
	})
}

// Stop stops the agent (SIGTERM, then SIGKILL after a while) and waits for it to exit.
// Stopping a stopped agent does nothing.
func (a *Agent) Stop() { a.proc.Stop(stopTimeout) }

// Restart stops the agent if it runs, starts it again on the same ports with empty state
// (a new data directory: as if the agent's machine had been replaced), and waits until it
// is ready. It fails the test if the agent does not come up.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	if err := a.start(); err != nil {
		a.t.Fatalf("consultest: restart: %v\nlog tail:\n%s", err, a.LogTail(4096))
	}
}

// LogTail returns up to the last n bytes of the agent's output.
func (a *Agent) LogTail(n int) string { return tooltest.LogTail(a.logPath, n) }

// start runs the agent process, without the CONSUL_* variables that would reconfigure the
// agent's own CLI, and waits until it has a leader and its node's serf health check passes
// (only then does a passing-only health query return the services on it).
func (a *Agent) start() error {
	// A fresh data directory each time: a dev agent keeps its catalog in memory, and an
	// agent that comes back must not reload the services it persisted either.
	a.starts++
	dataDir := filepath.Join(a.dir, fmt.Sprintf("data-%d", a.starts))
	proc, err := tooltest.Run(a.bin, append(a.args[:len(a.args):len(a.args)], "-data-dir="+dataDir), []string{"CONSUL_"}, a.logPath)
	if err != nil {
		return err
	}
	a.proc.Set(proc)
	client := &http.Client{Timeout: 2 * time.Second}
	if err := proc.WaitReady(readyTimeout, func() error { return a.ready(client) }); err != nil {
		return fmt.Errorf("agent on %s: %w\nlog tail:\n%s", a.Addr, err, a.LogTail(4096))
	}
	return nil
}

func (a *Agent) ready(client *http.Client) error {
	var leader string
	if err := a.get(client, "/v1/status/leader", &leader); err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	var checks []struct{ CheckID, Status string }
	if err := a.get(client, "/v1/health/node/"+nodeName, &checks); err != nil {
		return err
	}
	for _, c := range checks {
		if c.CheckID == "serfHealth" && c.Status == "passing" {
			return nil
		}
	}
	return errors.New("node not healthy yet")
}

func (a *Agent) get(client *http.Client, path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, "http://"+a.Addr+path, nil)
	if err != nil {
		return err
	}
	if a.Token != "" {
		req.Header.Set("X-Consul-Token", a.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(body.String()))
	}
	return json.Unmarshal(body.Bytes(), v)
}

// Binary returns the path of the consul binary: $CONSUL_BIN, <repo>/.cache/bin/consul, or
// consul on PATH; when there is none it builds the pinned version with
// <repo>/tools/consul/build.sh (minutes, once). It never skips: the tests that need it
// must run.
func Binary(t testing.TB) string {
	t.Helper()
	return tooltest.Binary(t, "consul", "CONSUL_BIN")
}
