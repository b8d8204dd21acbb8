package plugin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/abi/transportpb"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// killGrace is how long stopping a plugin waits for it to exit when asked, before SIGKILL.
// (go-plugin itself waits 2s after a successful shutdown request.)
const killGrace = 3 * time.Second

// kind is one kind of plugin: its protocol's name and version in the handshake.
type kind struct {
	// name is the plugin set's entry (abi.RegistryPlugin, ...), and names the kind in
	// logs and errors ("registry plugin \"consul\"").
	name string
	// version is the protocol version.
	version uint
	// sdk is the package that plugins of this kind are built against.
	sdk string
	// dialOptions are added to go-plugin's gRPC connection.
	dialOptions []grpc.DialOption
}

var (
	registryKind  = kind{name: abi.RegistryPlugin, version: abi.RegistryProtocolVersion, sdk: "sdk/registry"}
	transportKind = kind{
		name:    abi.TransportPlugin,
		version: abi.TransportProtocolVersion,
		sdk:     "sdk/transport",
		dialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(transportpb.MaxFrameSize),
			grpc.MaxCallSendMsgSize(transportpb.MaxFrameSize),
		)},
	}
	brokerKind = kind{
		name:    abi.BrokerPlugin,
		version: abi.BrokerProtocolVersion,
		sdk:     "sdk/broker",
		dialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(brokerpb.MaxFrameSize),
			grpc.MaxCallSendMsgSize(brokerpb.MaxFrameSize),
		)},
	}
)

// instance is one running plugin process.
type instance struct {
	client    *goplugin.Client
	conn      *grpc.ClientConn
	registry  registrypb.RegistryClient
	transport transportpb.TransportClient
	broker    brokerpb.BrokerClient
	health    healthpb.HealthClient
	exited    <-chan struct{} // closed when the process has exited
	pid       int
	started   time.Time
	stop      func() // stops the process and waits for go-plugin's goroutines
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

// grpcPlugin is micro's half of go-plugin's GRPCPlugin, for any kind.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	kind string
}

// dispensed is what grpcPlugin.GRPCClient hands out.
type dispensed struct {
	conn   *grpc.ClientConn
	exited <-chan struct{}
}

func (p grpcPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("the server half of the %s protocol is the plugin's", p.kind)
}

// GRPCClient is handed a context that go-plugin cancels when the process exits.
func (grpcPlugin) GRPCClient(ctx context.Context, _ *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &dispensed{conn: conn, exited: ctx.Done()}, nil
}

// handshake is go-plugin's handshake for k's protocol.
func (k kind) handshake() goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{
		ProtocolVersion:  k.version,
		MagicCookieKey:   abi.MagicCookieKey,
		MagicCookieValue: abi.MagicCookieValue,
	}
}

// start starts the plugin at path, completes the handshake and calls init. On any error
// the process is gone when start returns.
func start(ctx context.Context, k kind, c procConfig, path string, log *slog.Logger, init func(context.Context, *instance) error) (*instance, error) {
	var secure *goplugin.SecureConfig
	if c.SHA256 != "" {
		// go-plugin checks the digest too, but says only "checksums did not match".
		if err := checkPin(k, c.Name, path, c.SHA256); err != nil {
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
		HandshakeConfig:  k.handshake(),
		Plugins:          goplugin.PluginSet{k.name: grpcPlugin{kind: k.name}},
		Cmd:              cmd,
		SecureConfig:     secure,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     c.StartTimeout,
		GRPCDialOptions:  k.dialOptions,
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
		return nil, fmt.Errorf("start %s plugin %q: %w", k.name, c.Name, ctx.Err())
	}
	if err != nil {
		kill()
		return nil, startError(k, c, path, err, out)
	}

	in, err := dispense(k, client)
	if err != nil {
		kill()
		return nil, fmt.Errorf("%s plugin %q (%s): %w", k.name, c.Name, path, err)
	}
	in.stop = kill
	if rc := client.ReattachConfig(); rc != nil {
		in.pid = rc.Pid
	}

	ictx, cancel := context.WithTimeout(ctx, c.StartTimeout)
	defer cancel()
	if err := init(ictx, in); err != nil {
		kill()
		return nil, fmt.Errorf("%s plugin %q: init: %w", k.name, c.Name, rpcError(err))
	}
	return in, nil
}

func dispense(k kind, client *goplugin.Client) (*instance, error) {
	proto, err := client.Client()
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	raw, err := proto.Dispense(k.name)
	if err != nil {
		return nil, fmt.Errorf("the plugin serves no %q plugin: %w", k.name, err)
	}
	d, ok := raw.(*dispensed)
	if !ok {
		return nil, fmt.Errorf("dispensed a %T", raw)
	}
	return &instance{
		client:    client,
		conn:      d.conn,
		registry:  registrypb.NewRegistryClient(d.conn),
		transport: transportpb.NewTransportClient(d.conn),
		broker:    brokerpb.NewBrokerClient(d.conn),
		health:    healthpb.NewHealthClient(d.conn),
		exited:    d.exited,
		started:   time.Now(),
	}, nil
}

// pluginVersion finds the plugin's protocol version in go-plugin's error
// "incompatible API version with plugin. Plugin version: 2, Client versions: [1]".
var pluginVersion = regexp.MustCompile(`incompatible API version with plugin\. Plugin version: (\d+)`)

// unrecognized starts go-plugin's error for a first line that is no handshake.
const unrecognized = "Unrecognized remote plugin message: "

// startError explains go-plugin's error from a failed start.
func startError(k kind, c procConfig, path string, err error, out *tail) error {
	msg := err.Error()
	if m := pluginVersion.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s plugin %q speaks protocol %s, micro speaks %d (%s); rebuild the plugin against this micro's %s",
			k.name, c.Name, m[1], k.version, path, k.sdk)
	}
	var why string
	switch {
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		why = fmt.Sprintf("no handshake within %v; is it a micro %s plugin?", c.StartTimeout, k.name)
	case strings.Contains(msg, "plugin exited before we could connect"),
		strings.Contains(msg, "Failed to read any lines from plugin's stdout"):
		why = "exited before its handshake"
	case strings.HasPrefix(msg, unrecognized):
		first, _, _ := strings.Cut(strings.TrimPrefix(msg, unrecognized), "\n")
		why = fmt.Sprintf("not a micro %s plugin: its first line on stdout, %q, is not a go-plugin handshake", k.name, first)
	default:
		return fmt.Errorf("start %s plugin %q (%s): %w%s", k.name, c.Name, path, err, out.suffix())
	}
	return fmt.Errorf("%s plugin %q (%s): %s%s", k.name, c.Name, path, why, out.suffix())
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
