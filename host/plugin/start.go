package plugin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/registrypb"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// killGrace is how long stopping a plugin waits for it to exit when asked, before SIGKILL.
// (go-plugin itself waits 2s after a successful shutdown request.)
const killGrace = 3 * time.Second

// instance is one running plugin process.
type instance struct {
	client  *goplugin.Client
	rpc     registrypb.RegistryClient
	health  healthpb.HealthClient
	exited  <-chan struct{} // closed when the process has exited
	pid     int
	started time.Time
	stop    func() // stops the process and waits for go-plugin's goroutines
}

// kill stops the process (asking it first, then by SIGKILL) and waits for go-plugin's
// goroutines.
func (in *instance) kill() { in.stop() }

// ping checks that the plugin answers go-plugin's health service within d.
func (in *instance) ping(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := in.health.Check(ctx, &healthpb.HealthCheckRequest{Service: goplugin.GRPCServiceName})
	return err
}

// grpcPlugin is micro's half of go-plugin's GRPCPlugin for the registry protocol.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

// dispensed is what grpcPlugin.GRPCClient hands out.
type dispensed struct {
	rpc    registrypb.RegistryClient
	health healthpb.HealthClient
	exited <-chan struct{}
}

func (grpcPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the server half of the registry protocol is the plugin's")
}

// GRPCClient is handed a context that go-plugin cancels when the process exits.
func (grpcPlugin) GRPCClient(ctx context.Context, _ *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &dispensed{
		rpc:    registrypb.NewRegistryClient(conn),
		health: healthpb.NewHealthClient(conn),
		exited: ctx.Done(),
	}, nil
}

// handshake is go-plugin's handshake for the registry protocol.
func handshake() goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{
		ProtocolVersion:  abi.RegistryProtocolVersion,
		MagicCookieKey:   abi.MagicCookieKey,
		MagicCookieValue: abi.MagicCookieValue,
	}
}

// start starts the plugin at path, completes the handshake and calls Init. On any error
// the process is gone when start returns.
func start(ctx context.Context, c Config, path string, log *slog.Logger) (*instance, error) {
	var secure *goplugin.SecureConfig
	if c.SHA256 != "" {
		// go-plugin checks the digest too, but says only "checksums did not match".
		if err := checkPin(c.Name, path, c.SHA256); err != nil {
			return nil, err
		}
		sum, _ := hex.DecodeString(strings.ToLower(strings.TrimSpace(c.SHA256)))
		secure = &goplugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	// go-plugin's Start takes no context and holds the Client's lock until the handshake
	// ends, so Kill cannot interrupt it: killProc does, through the command's context.
	// That context is not ctx, which may end long before the plugin should.
	procCtx, killProc := context.WithCancel(context.Background())
	cmd := exec.CommandContext(procCtx, path)
	cmd.Env = append(cmd.Env, c.env...)
	dieWithParent(cmd)
	out := &tail{max: 8}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  handshake(),
		Plugins:          goplugin.PluginSet{abi.RegistryPlugin: grpcPlugin{}},
		Cmd:              cmd,
		SecureConfig:     secure,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     c.StartTimeout,
		Logger:           newHCLogger(log),
		Stderr:           out,
		SyncStdout:       &lineLogger{log: log, stream: "stdout"},
		SyncStderr:       &lineLogger{log: log, stream: "stderr"},
	})

	kill := func() {
		// Kill asks the plugin to shut down first, and that call blocks while the plugin
		// hangs: past killGrace, SIGKILL it.
		done := make(chan struct{})
		go func() {
			client.Kill()
			close(done)
		}()
		t := time.NewTimer(killGrace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			killProc()
			<-done
		}
		killProc()
	}
	started := make(chan error, 1)
	go func() {
		_, err := client.Start()
		started <- err
	}()
	var err error
	select {
	case err = <-started:
	case <-ctx.Done():
		killProc()
		<-started
		kill()
		return nil, fmt.Errorf("start registry plugin %q: %w", c.Name, ctx.Err())
	}
	if err != nil {
		kill()
		return nil, startError(c, path, err, out)
	}

	in, err := dispense(client)
	if err != nil {
		kill()
		return nil, fmt.Errorf("registry plugin %q (%s): %w", c.Name, path, err)
	}
	in.stop = kill
	if rc := client.ReattachConfig(); rc != nil {
		in.pid = rc.Pid
	}

	ictx, cancel := context.WithTimeout(ctx, c.StartTimeout)
	defer cancel()
	_, err = in.rpc.Init(ictx, &registrypb.InitRequest{
		Address:    c.Address,
		Datacenter: c.Datacenter,
		Token:      c.Token,
	})
	if err != nil {
		kill()
		return nil, fmt.Errorf("registry plugin %q: init: %w", c.Name, rpcError(err))
	}
	return in, nil
}

func dispense(client *goplugin.Client) (*instance, error) {
	proto, err := client.Client()
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	raw, err := proto.Dispense(abi.RegistryPlugin)
	if err != nil {
		return nil, fmt.Errorf("the plugin serves no %q plugin: %w", abi.RegistryPlugin, err)
	}
	d, ok := raw.(*dispensed)
	if !ok {
		return nil, fmt.Errorf("dispensed a %T", raw)
	}
	return &instance{
		client:  client,
		rpc:     d.rpc,
		health:  d.health,
		exited:  d.exited,
		started: time.Now(),
	}, nil
}

// pluginVersion finds the plugin's protocol version in go-plugin's error
// "incompatible API version with plugin. Plugin version: 2, Client versions: [1]".
var pluginVersion = regexp.MustCompile(`incompatible API version with plugin\. Plugin version: (\d+)`)

// unrecognized starts go-plugin's error for a first line that is no handshake.
const unrecognized = "Unrecognized remote plugin message: "

// startError explains go-plugin's error from a failed start.
func startError(c Config, path string, err error, out *tail) error {
	msg := err.Error()
	if m := pluginVersion.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("registry plugin %q speaks protocol %s, micro speaks %d (%s); rebuild the plugin against this micro's sdk/registry",
			c.Name, m[1], abi.RegistryProtocolVersion, path)
	}
	var why string
	switch {
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		why = fmt.Sprintf("no handshake within %v; is it a micro registry plugin?", c.StartTimeout)
	case strings.Contains(msg, "plugin exited before we could connect"),
		strings.Contains(msg, "Failed to read any lines from plugin's stdout"):
		why = "exited before its handshake"
	case strings.HasPrefix(msg, unrecognized):
		first, _, _ := strings.Cut(strings.TrimPrefix(msg, unrecognized), "\n")
		why = fmt.Sprintf("not a micro registry plugin: its first line on stdout, %q, is not a go-plugin handshake", first)
	default:
		return fmt.Errorf("start registry plugin %q (%s): %w%s", c.Name, path, err, out.suffix())
	}
	return fmt.Errorf("registry plugin %q (%s): %s%s", c.Name, path, why, out.suffix())
}

// tail keeps the last lines that a plugin wrote to its standard error, for errors.
type tail struct {
	max   int
	mu    sync.Mutex
	lines []string
	cur   []byte
}

// Write is called by go-plugin with a line and then, separately, its newline.
func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range p {
		if b != '\n' {
			if len(t.cur) < 1024 {
				t.cur = append(t.cur, b)
			}
			continue
		}
		if line := strings.TrimSpace(string(t.cur)); line != "" {
			t.lines = append(t.lines, line)
			if len(t.lines) > t.max {
				t.lines = t.lines[1:]
			}
		}
		t.cur = t.cur[:0]
	}
	return len(p), nil
}

// suffix returns "; its last output: ..." or "".
func (t *tail) suffix() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.lines
	if s := strings.TrimSpace(string(t.cur)); s != "" {
		lines = append(lines[:len(lines):len(lines)], s)
	}
	if len(lines) == 0 {
		return ""
	}
	shown := make([]string, len(lines))
	for i, l := range lines {
		shown[i] = logMessage(l)
	}
	return "; its last output: " + strings.Join(shown, " | ")
}

// logMessage returns the message of an hclog JSON line, or line itself.
func logMessage(line string) string {
	var entry struct {
		Level   string `json:"@level"`
		Message string `json:"@message"`
		Error   any    `json:"error"`
	}
	if json.Unmarshal([]byte(line), &entry) != nil || entry.Message == "" {
		return line
	}
	if entry.Error != nil {
		return fmt.Sprintf("%s: %s: %v", entry.Level, entry.Message, entry.Error)
	}
	return entry.Level + ": " + entry.Message
}

// lineLogger logs what a plugin writes to os.Stdout and os.Stderr once go-plugin has
// taken them over (not its log lines: those arrive through the hclog logger).
type lineLogger struct {
	log    *slog.Logger
	stream string
	mu     sync.Mutex
	buf    []byte
}

func (w *lineLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimSpace(string(w.buf[:i])); line != "" {
			w.log.Info(line, "stream", w.stream)
		}
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.log.Info(string(w.buf), "stream", w.stream)
		w.buf = w.buf[:0]
	}
	return len(p), nil
}
