package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"text/template"

	microsrc "github.com/microhost/micro"
	"github.com/microhost/micro/host/wasm"
)

// microModule is the module path of micro, whose sdk/wrapper a wrapper imports.
const microModule = "github.com/microhost/micro"

const wrapperUsage = `Usage:
  micro wrapper new [-dir DIR] NAME    write a new wrapper project (default DIR: ./NAME)
  micro wrapper build [-o FILE] DIR    build the wrapper in DIR to .wasm (default FILE: DIR/NAME.wasm)

A wrapper is a Go package main built with GOOS=wasip1 GOARCH=wasm against
github.com/microhost/micro/sdk/wrapper. Name it in micro.toml as [wrappers.NAME], with
source = "DIR" (micro builds it) or path = "FILE.wasm". Outside micro's repository,
'micro wrapper new' writes the SDK that this micro binary carries into the project
(see 'micro wrapper new -h'): no network and no checkout of micro are needed.
`

// wrapperCmd runs `micro wrapper SUBCOMMAND`.
func wrapperCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, wrapperUsage)
		return errUsage
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "new":
		return wrapperNewCmd(rest, stdout, stderr)
	case "build":
		return wrapperBuildCmd(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, wrapperUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "micro wrapper: unknown command %q\n\n%s", sub, wrapperUsage)
		return errUsage
	}
}

// parseInterleaved parses flags that may come before or after the positional arguments,
// and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// wrapperNewHelp is the help of `micro wrapper new`.
const wrapperNewHelp = `wrapper new [-dir DIR] NAME

Writes a wrapper project named NAME (lowercase letters, digits and '-') into DIR, which
must not exist or must be empty: main.go, the wrapper; main_test.go, its tests, which run
natively with 'go test'; and README.md.

Where the SDK comes from:
  - Inside a Go module that provides ` + microModule + ` (micro's own
    repository, or a module that requires micro), the project is a package of that module
    and imports the module's SDK.
  - Anywhere else, the project is a module of its own. This micro binary carries the
    sources of the SDK (` + microModule + `/sdk/wrapper and the abi/wrapper
    it imports) and writes them into DIR/` + sdkDir + `; the project's go.mod
    requires ` + microModule + ` v0.0.0 and replaces it with that directory.
    'go build', 'go test' and 'micro wrapper build' then need no network, no module cache
    and no checkout of micro.`

func wrapperNewCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("wrapper new", wrapperNewHelp, stderr)
	dir := fs.String("dir", "", "directory of the project (default ./NAME)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	name := pos[0]
	if err := checkWrapperName(name); err != nil {
		return err
	}
	if *dir == "" {
		*dir = name
	}
	p, err := newWrapperProject(name, *dir, microsrc.WrapperSDK, version)
	if err != nil {
		return err
	}
	if err := p.write(); err != nil {
		return err
	}
	for _, f := range p.files {
		if !strings.HasPrefix(f.name, sdkDir+"/") {
			fmt.Fprintln(stdout, "wrote", filepath.Join(*dir, filepath.FromSlash(f.name)))
		}
	}
	if p.standalone {
		fmt.Fprintf(stdout, "wrote %s (the wrapper SDK that micro %s carries)\n", filepath.Join(*dir, filepath.FromSlash(sdkDir)), version)
	}
	if p.note != "" {
		fmt.Fprintln(stderr, "note:", p.note)
	}
	fmt.Fprintf(stdout, "test it with: (cd %s && go test)\nbuild it with: micro wrapper build %s\n", *dir, *dir)
	return nil
}

func wrapperBuildCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("wrapper build", "wrapper build [-o FILE] DIR\n\n"+
		"Builds the wrapper package in DIR to a .wasm module with the Go toolchain\n"+
		"(GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared) and prints its path and size.", stderr)
	out := fs.String("o", "", "the .wasm file to write (default DIR/NAME.wasm, NAME being DIR's last element)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	dir := pos[0]
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("wrapper build: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("wrapper build: %s is not a directory", dir)
	}
	if *out == "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("wrapper build: %w", err)
		}
		*out = filepath.Join(dir, filepath.Base(abs)+".wasm")
	}
	if err := wasm.Build(ctx, dir, *out); err != nil {
		return fmt.Errorf("wrapper build %s: %w", dir, err)
	}
	st, err := os.Stat(*out)
	if err != nil {
		return fmt.Errorf("wrapper build %s: %w", dir, err)
	}
	fmt.Fprintf(stdout, "%s (%s)\n", *out, formatSize(st.Size()))
	return nil
}

// formatSize writes a byte count for people: 3.5 MiB.
func formatSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}

var wrapperNameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// checkWrapperName reports whether name can name a wrapper (and its directory and .wasm).
func checkWrapperName(name string) error {
	if !wrapperNameRE.MatchString(name) {
		return fmt.Errorf("wrapper new: invalid name %q: use lowercase letters, digits and '-', "+
			"starting with a letter and not ending with '-', at most 63 characters (e.g. \"auth-check\")", name)
	}
	return nil
}

// wrapperProject is the files of a new wrapper.
type wrapperProject struct {
	dir   string
	files []projectFile
	// standalone is true for a module of its own, which carries the SDK in sdkDir.
	standalone bool
	// note is advice printed after the files are written, or "".
	note string
}

// projectFile is a file of a new project; name is relative to the project, in slash form.
type projectFile struct {
	name string
	data []byte
}

// wrapperTemplateData is what the templates of a new project fill in.
type wrapperTemplateData struct {
	Name       string
	Dir        string // the project's directory as given, in slash form, for micro.toml
	Wasm       string // the .wasm that micro wrapper build writes by default, for micro.toml
	CmdDir     string // the project's directory in the README's commands
	Pkg        string // CmdDir as a go command's package argument
	CmdWasm    string // Wasm in the README's commands
	Module     string // the module the project belongs to: its own (Name) or the one around it
	Standalone bool   // the project is a module of its own, with the SDK in SDKDir
	SDKDir     string
	Version    string // micro's version
}

// newWrapperProject prepares the files of wrapper name in dir. Inside a Go module that
// provides micro's SDK (micro's own, or one that requires micro) the project is a package
// of that module. Anywhere else it is a module of its own that carries sdk, the SDK that
// this micro embeds (see sdkDir).
func newWrapperProject(name, dir string, sdk fs.FS, version string) (*wrapperProject, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("wrapper new: %w", err)
	}
	slashDir := filepath.ToSlash(filepath.Clean(dir))
	wasmName := filepath.Base(abs) + ".wasm" // what micro wrapper build writes by default
	data := wrapperTemplateData{
		Name: name, Dir: slashDir, Wasm: slashDir + "/" + wasmName,
		CmdDir: slashDir, Pkg: slashDir, CmdWasm: slashDir + "/" + wasmName,
		Module: name, SDKDir: sdkDir, Version: version,
	}
	if !filepath.IsAbs(dir) && !strings.HasPrefix(data.Pkg, ".") {
		data.Pkg = "./" + data.Pkg
	}
	p := &wrapperProject{dir: dir}

	modFile, modPath, err := findModule(abs)
	if err != nil {
		return nil, fmt.Errorf("wrapper new %s: %w", dir, err)
	}
	if modFile != "" && (modPath == microModule || requiresMicro(modFile)) {
		// A package of the module around it, which provides the SDK.
		data.Module = modPath
		p.files = wrapperFiles(data)
		return p, nil
	}
	if modFile != "" {
		p.note = fmt.Sprintf("%s is inside module %s (%s), which does not require %s: "+
			"the wrapper is a module of its own, nested in it", dir, modPath, modFile, microModule)
	}
	// The commands of a module of its own run in its directory.
	p.standalone, data.Standalone = true, true
	data.CmdDir, data.Pkg, data.CmdWasm = ".", ".", "./"+wasmName
	sdkCopy, goLine, err := sdkFiles(sdk, version)
	if err != nil {
		return nil, fmt.Errorf("wrapper new: %w", err)
	}
	p.files = append(wrapperFiles(data), projectFile{"go.mod", fmt.Appendf(nil,
		"module %s\n\n%s\n\nrequire %s v0.0.0\n\n"+
			"// The wrapper SDK that micro %s carries, written beside the wrapper: builds need\n"+
			"// no network and no checkout of micro (see %s/README.md).\nreplace %s => ./%s\n",
		name, goLine, microModule, version, sdkDir, microModule, sdkDir)})
	p.files = append(p.files, sdkCopy...)
	return p, nil
}

// wrapperFiles returns the wrapper's own files: its code, its tests and its README.
func wrapperFiles(data wrapperTemplateData) []projectFile {
	return []projectFile{
		{"main.go", execTemplate(wrapperMainTmpl, data)},
		{"main_test.go", execTemplate(wrapperTestTmpl, data)},
		{"README.md", execTemplate(wrapperReadmeTmpl, data)},
	}
}

// write creates the project's directory and files. The directory must not exist, or be
// empty: a new project never mixes with other files.
func (p *wrapperProject) write() error {
	entries, err := os.ReadDir(p.dir)
	switch {
	case err == nil && len(entries) > 0:
		return fmt.Errorf("wrapper new: %s already exists and is not empty: choose another name or -dir", p.dir)
	case isNotDir(err):
		return fmt.Errorf("wrapper new: %s already exists and is not a directory: choose another name or -dir", p.dir)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("wrapper new: %w", err)
	}
	for _, f := range p.files {
		path := filepath.Join(p.dir, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("wrapper new: %w", err)
		}
		fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("wrapper new: %w", err)
		}
		_, err = fh.Write(f.data)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("wrapper new: writing %s: %w", path, err)
		}
	}
	return nil
}

// findModule returns the go.mod file that governs dir (which need not exist yet) and its
// module path, or "" when dir is in no module.
func findModule(dir string) (file, module string, err error) {
	for d := dir; ; {
		f := filepath.Join(d, "go.mod")
		b, err := os.ReadFile(f)
		switch {
		case err == nil:
			return f, modulePath(b), nil
		case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) && !isNotDir(err):
			return "", "", fmt.Errorf("looking for go.mod: %w", err)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", "", nil
		}
		d = parent
	}
}

// isNotDir reports whether err says a path element is a file, not a directory.
func isNotDir(err error) bool { return errors.Is(err, syscall.ENOTDIR) }

// modulePath returns the module path a go.mod declares, or "".
func modulePath(gomod []byte) string {
	for line := range bytes.Lines(gomod) {
		f := strings.Fields(string(line))
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// requireMicroRE matches a go.mod line that requires micro, alone or in a require block.
var requireMicroRE = regexp.MustCompile(`(?m)^\s*(require\s+)?` + regexp.QuoteMeta(microModule) + `\s`)

// requiresMicro reports whether a go.mod requires micro's module.
func requiresMicro(gomod string) bool {
	b, err := os.ReadFile(gomod)
	return err == nil && requireMicroRE.Match(b)
}

func execTemplate(t *template.Template, data any) []byte {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		panic(err) // the templates are constants; a failure is a bug
	}
	return b.Bytes()
}

// wrapperMainTmpl is a new wrapper's code: a handler that needs no more than the SDK.
var wrapperMainTmpl = template.Must(template.New("main.go").Parse(`// Command {{.Name}} is a micro wrapper: middleware that micro runs as WebAssembly around
// each call. Build it with "micro wrapper build {{.CmdDir}}", or let micro build it from
// source (see README.md). It builds natively too, so that "go test" runs main_test.go
// against the handler below.
//
// This example requires a header on every call (optional), tags each call with a header
// the service receives, and logs failed calls.
package main

import (
	"errors"
	"log/slog"

	"github.com/microhost/micro/sdk/wrapper"
)

// config is the wrapper's table in micro.toml, [wrappers.{{.Name}}.config].
type config struct {
	// Require names a header that every call must carry; a call without it gets a 401.
	// Empty: no header is required.
	Require string ` + "`json:\"require\"`" + `
	// Tag is the value of the X-Wrapper-Tag header added to each call.
	Tag string ` + "`json:\"tag\"`" + `
}

// The instance's state. micro never runs two calls into one instance at once, so plain
// variables need no locks.
var (
	cfg      config
	failures int
)

func init() { wrapper.Handle(handler()) }

// handler returns the wrapper's code, for init and for the tests.
func handler() wrapper.Handler {
	return wrapper.Handler{
		Init:       initConfig,
		OnRequest:  onRequest,
		OnResponse: onResponse,
	}
}

// initConfig reads the config once per instance; an error stops micro from loading the
// wrapper, and micro shows it.
func initConfig(b []byte) error {
	cfg = config{Tag: "{{.Name}}"} // the defaults
	if err := wrapper.DecodeConfig(b, &cfg); err != nil {
		return err
	}
	if cfg.Tag == "" {
		return errors.New("config: tag must not be empty")
	}
	return nil
}

// onRequest decides about each call before it goes on.
func onRequest(r wrapper.Request) wrapper.Result {
	if cfg.Require != "" {
		if _, ok := r.Header(cfg.Require); !ok {
			return wrapper.Reject(401, "missing header "+cfg.Require)
		}
	}
	r.SetHeader("X-Wrapper-Tag", cfg.Tag)
	return wrapper.Continue()
}

// onResponse sees the outcome of each call that onRequest let through.
func onResponse(r wrapper.Response) {
	if r.Err() == "" && r.Status() < 500 {
		return
	}
	failures++
	wrapper.Logf(slog.LevelWarn, "{{.Name}}: %s %s on node %s failed after %v: status %d %s (%d failures so far)",
		r.Service(), r.Endpoint(), r.Node(), r.Latency(), r.Status(), r.Err(), failures)
}

func main() {} // never run: micro calls the wrapper through the handler above
`))

// wrapperTestTmpl is a new wrapper's tests, which run natively under package wrappertest.
var wrapperTestTmpl = template.Must(template.New("main_test.go").Parse(`package main

// These tests run the handler natively, with "go test": package wrappertest plays micro.

import (
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

func TestRequireAndTag(t *testing.T) {
	inst, err := wrappertest.New(handler(), ` + "`" + `{"require": "X-User", "tag": "t1"}` + "`" + `)
	if err != nil {
		t.Fatal(err)
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	if got := inst.Request(req); got.Verdict != wrappertest.Rejected || got.Status != 401 || got.Message != "missing header X-User" {
		t.Errorf("a call without X-User: %v, want rejected 401 \"missing header X-User\"", got)
	}
	req.Header["x-user"] = "ada"
	if got := inst.Request(req); got.Verdict != wrappertest.Continued || got.Header["X-Wrapper-Tag"] != "t1" {
		t.Errorf("a call with X-User: %v, want it to continue with X-Wrapper-Tag: t1", got)
	}
}

func TestDefaults(t *testing.T) {
	inst, err := wrappertest.New(handler(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := inst.Request(wrappertest.NewRequest("greeter", "Greeter.Hello")); got.Verdict != wrappertest.Continued || got.Header["X-Wrapper-Tag"] != "{{.Name}}" {
		t.Errorf("with no header required: %v, want the call to continue with X-Wrapper-Tag: {{.Name}}", got)
	}
}

func TestLogsFailures(t *testing.T) {
	inst, err := wrappertest.New(handler(), "")
	if err != nil {
		t.Fatal(err)
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	inst.Request(req)
	if err := inst.Response(req, wrappertest.Outcome{Status: 503, Latency: 20 * time.Millisecond, Fault: true}); err != nil {
		t.Fatal(err)
	}
	logs := inst.Logs()
	if len(logs) != 1 || !strings.Contains(logs[0].Message, "failed after 20ms: status 503") {
		t.Errorf("logs = %v, want one line about the failure", logs)
	}
}

func TestBadConfig(t *testing.T) {
	for config, want := range map[string]string{
		` + "`" + `{"requier": "X-User"}` + "`" + `: "requier",
		` + "`" + `{"tag": ""}` + "`" + `:           "tag must not be empty",
	} {
		_, err := wrappertest.New(handler(), config)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %s: %v, want an error naming %q", config, err, want)
		}
	}
}
`))

// wrapperReadmeTmpl is a new wrapper's README: how to test, build and use it.
var wrapperReadmeTmpl = template.Must(template.New("README.md").Parse(`# {{.Name}}

A micro wrapper: Go built to WebAssembly with github.com/microhost/micro/sdk/wrapper, which
micro runs around each call. ` + "`main.go`" + ` holds the code and ` + "`main_test.go`" + ` its tests; the
SDK's package doc describes the whole API (` + "`go doc github.com/microhost/micro/sdk/wrapper`" + `).
{{if .Standalone}}
The project is a Go module of its own, {{.Name}}. The SDK is beside it, in ` + "`{{.SDKDir}}`" + `:
micro {{.Version}} carries the SDK's sources and wrote them there, and ` + "`go.mod`" + ` replaces
github.com/microhost/micro with that directory. Building and testing need no network and
no checkout of micro. Run the commands below in this directory.
{{else}}
The project is a package of module {{.Module}}, which provides the SDK.
{{end}}
## Test

` + "```sh" + `
go test {{.Pkg}}
` + "```" + `

The tests run natively: package wrappertest (github.com/microhost/micro/sdk/wrapper/wrappertest)
plays micro's part, with requests you build and a clock that moves when told.

## Build

` + "```sh" + `
micro wrapper build {{.CmdDir}}    # writes {{.CmdWasm}}
micro wrapper build -o {{.Name}}.wasm {{.CmdDir}}
` + "```" + `

which runs the standard Go toolchain:

` + "```sh" + `
GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {{.Name}}.wasm {{.Pkg}}
` + "```" + `

## Use it

Name it in micro.toml, and list it where it should run: ` + "`client.wrappers`" + ` for every
attempt of an outgoing call, ` + "`server.wrappers`" + ` for inbound calls to the services this
micro fronts.

` + "```toml" + `
[client]
wrappers = ["{{.Name}}"]

[wrappers.{{.Name}}]
source = "{{.Dir}}"  # micro builds it on first use, and again when its sources change
# path = "{{.Wasm}}"  # or the module that micro wrapper build wrote
on_trap = "open"  # a guest fault lets the call through ("closed": 503)

[wrappers.{{.Name}}.config]  # reaches Init as JSON
require = "X-User"  # calls without an X-User header get 401
tag = "{{.Name}}"
` + "```" + `

micro applies edits to micro.toml and rebuilt modules live. Relative paths are from
micro.toml's directory.

## Rules of the road

- Register the handler from an ` + "`init`" + ` func; ` + "`main`" + ` never runs.
- micro never runs two calls into one instance at once: keep state in plain variables.
- Guests have no filesystem and no network; log with ` + "`wrapper.Logf`" + `.
- Header names starting with ` + "`Micro-`" + ` belong to micro and cannot be set.
`))
