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

	"github.com/microhost/micro/host/wasm"
)

// microModule is the module path of micro, whose sdk/wrapper a wrapper imports.
const microModule = "github.com/microhost/micro"

const wrapperUsage = `Usage:
  micro wrapper new [-dir DIR] NAME    write a new wrapper project (default DIR: ./NAME)
  micro wrapper build [-o FILE] DIR    build the wrapper in DIR to .wasm (default FILE: DIR/NAME.wasm)

A wrapper is a Go package main built with GOOS=wasip1 GOARCH=wasm against
github.com/microhost/micro/sdk/wrapper. Name it in micro.toml as [wrappers.NAME], with
source = "DIR" (micro builds it) or path = "FILE.wasm".
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

func wrapperNewCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("wrapper new", "wrapper new [-dir DIR] NAME\n\n"+
		"Writes a ready-to-build wrapper project named NAME (lowercase letters, digits and '-')\n"+
		"into DIR. Inside a Go module that provides "+microModule+"/sdk (micro's own\n"+
		"repository, or a module that requires micro) it writes main.go and README.md, a package\n"+
		"of that module; outside any module it also writes a go.mod that points at the micro\n"+
		"source tree around the current directory. It never overwrites a file.", stderr)
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
	p, err := newWrapperProject(name, *dir)
	if err != nil {
		return err
	}
	if err := p.write(); err != nil {
		return err
	}
	for _, f := range p.files {
		fmt.Fprintln(stdout, "wrote", filepath.Join(*dir, f.name))
	}
	if p.note != "" {
		fmt.Fprintln(stderr, "note:", p.note)
	}
	fmt.Fprintf(stdout, "build it with: micro wrapper build %s\n", *dir)
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
	// note is advice printed after the files are written, or "".
	note string
}

type projectFile struct {
	name string
	data []byte
}

// newWrapperProject prepares the files of wrapper name in dir. Inside a Go module the
// project is a package of it; outside any module it gets a go.mod that replaces micro's
// module with the micro source tree found around the working directory.
func newWrapperProject(name, dir string) (*wrapperProject, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("wrapper new: %w", err)
	}
	slashDir := filepath.ToSlash(filepath.Clean(dir))
	pkg := slashDir
	if !filepath.IsAbs(dir) && !strings.HasPrefix(pkg, ".") {
		pkg = "./" + pkg
	}
	data := struct {
		Name string
		Dir  string // as given, in slash form, for the README's commands
		Pkg  string // Dir as a go build argument
		Wasm string // what micro wrapper build writes by default
	}{name, slashDir, pkg, slashDir + "/" + filepath.Base(abs) + ".wasm"}
	p := &wrapperProject{dir: dir}
	p.files = append(p.files,
		projectFile{"main.go", execTemplate(wrapperMainTmpl, data)},
		projectFile{"README.md", execTemplate(wrapperReadmeTmpl, data)},
	)

	modFile, modPath, err := findModule(abs)
	if err != nil {
		return nil, fmt.Errorf("wrapper new: %w", err)
	}
	switch {
	case modFile != "" && modPath == microModule:
		// A package of micro's module: it builds as it is.
	case modFile != "":
		if !requiresMicro(modFile) {
			p.note = fmt.Sprintf("module %s (%s) does not require %s; the wrapper needs its sdk/wrapper package to build",
				modPath, modFile, microModule)
		}
	default:
		cwd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("wrapper new: %w", err)
		}
		root, err := findMicroRoot(cwd)
		if err != nil {
			return nil, fmt.Errorf("wrapper new: %w", err)
		}
		if root == "" {
			return nil, fmt.Errorf("wrapper new: %s is in no Go module, and the micro source tree is not "+
				"around the current directory to point a go.mod at: create the wrapper inside micro's "+
				"repository, inside a module that requires %s, or run this from micro's repository", dir, microModule)
		}
		goLine, err := goDirective(filepath.Join(root, "go.mod"))
		if err != nil {
			return nil, fmt.Errorf("wrapper new: %w", err)
		}
		p.files = append(p.files, projectFile{"go.mod", fmt.Appendf(nil,
			"module %s\n\n%s\n\nrequire %s v0.0.0\n\n// The micro source tree this wrapper was created from.\nreplace %s => %s\n",
			name, goLine, microModule, microModule, filepath.ToSlash(root))})
	}
	return p, nil
}

// write creates the project's files, refusing to overwrite any: it checks them all before
// it writes one.
func (p *wrapperProject) write() error {
	var exist []string
	for _, f := range p.files {
		path := filepath.Join(p.dir, f.name)
		if _, err := os.Lstat(path); err == nil {
			exist = append(exist, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("wrapper new: %w", err)
		}
	}
	if len(exist) > 0 {
		return fmt.Errorf("wrapper new: not overwriting %s: choose another name or -dir, or remove them",
			strings.Join(exist, ", "))
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return fmt.Errorf("wrapper new: %w", err)
	}
	for _, f := range p.files {
		path := filepath.Join(p.dir, f.name)
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

// findMicroRoot returns the directory of micro's go.mod at or above dir, or "".
func findMicroRoot(dir string) (string, error) {
	for {
		file, module, err := findModule(dir)
		if err != nil || file == "" {
			return "", err
		}
		if module == microModule {
			return filepath.Dir(file), nil
		}
		parent := filepath.Dir(filepath.Dir(file))
		if parent == filepath.Dir(file) {
			return "", nil
		}
		dir = parent
	}
}

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

// goDirective returns the go line of a go.mod, e.g. "go 1.26.8".
func goDirective(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for line := range bytes.Lines(b) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == "go" {
			return "go " + f[1], nil
		}
	}
	return "", fmt.Errorf("%s has no go line", gomod)
}

func execTemplate(t *template.Template, data any) []byte {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		panic(err) // the templates are constants; a failure is a bug
	}
	return b.Bytes()
}

var wrapperMainTmpl = template.Must(template.New("main.go").Parse(`//go:build wasip1

// Command {{.Name}} is a micro wrapper: middleware that micro runs as WebAssembly around
// each call. Build it with "micro wrapper build {{.Dir}}", or let micro build it from
// source (see README.md).
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

func init() {
	wrapper.Handle(wrapper.Handler{
		Init:       initConfig,
		OnRequest:  onRequest,
		OnResponse: onResponse,
	})
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

var wrapperReadmeTmpl = template.Must(template.New("README.md").Parse(`# {{.Name}}

A micro wrapper: Go built to WebAssembly with github.com/microhost/micro/sdk/wrapper, which
micro runs around each call. ` + "`main.go`" + ` holds the code; the SDK's package doc describes the
whole API (` + "`go doc github.com/microhost/micro/sdk/wrapper`" + `).

## Build

` + "```sh" + `
micro wrapper build {{.Dir}}    # writes {{.Wasm}}
micro wrapper build -o {{.Name}}.wasm {{.Dir}}
` + "```" + `

which runs the standard Go toolchain:

` + "```sh" + `
GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {{.Name}}.wasm {{.Pkg}}
` + "```" + `

The package must build inside a Go module that provides github.com/microhost/micro: micro's
own repository (the project is then one of its packages), or a module that requires it
(a go.mod with ` + "`require github.com/microhost/micro`" + ` and, until micro is published, a
` + "`replace`" + ` pointing at micro's source tree).

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
