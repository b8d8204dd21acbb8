package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	microsrc "github.com/microhost/micro"
	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/host/wasm"
	"github.com/microhost/micro/runtime/wrapper"
)

// micro runs the CLI in-process and returns its stdout and stderr.
func micro(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), args, strings.NewReader(""), &o, &e)
	return o.String(), e.String(), err
}

// buildWrapper builds dir with `micro wrapper build` and returns the .wasm.
func buildWrapper(t *testing.T, dir string) []byte {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a wasm module")
	}
	out := filepath.Join(t.TempDir(), "w.wasm")
	stdout, stderr, err := micro(t, "wrapper", "build", "-o", out, dir)
	if err != nil {
		t.Fatalf("micro wrapper build %s: %v\nstderr: %s", dir, err, stderr)
	}
	if !strings.HasPrefix(stdout, out+" (") || !strings.Contains(stdout, "MiB)") {
		t.Errorf("build printed %q, want the path and size", stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	checkWasm(t, b)
	return b
}

// checkWasm checks that b is a wasm module that exports the functions and memory of the
// wrapper ABI. It reads the export section itself: compiling a Go guest with wazero takes
// many seconds under the race detector, and the loads below compile it once anyway.
func checkWasm(t *testing.T, b []byte) {
	t.Helper()
	exports, err := wasmExports(b)
	if err != nil {
		t.Fatalf("not a wasm module: %v", err)
	}
	for _, name := range []string{abi.ExportABIVersion, abi.ExportInitialize, abi.ExportOnInit, abi.ExportOnRequest, abi.ExportOnResponse} {
		if exports[name] != 0x00 {
			t.Errorf("the module does not export the function %s", name)
		}
	}
	if kind, ok := exports[abi.ExportMemory]; !ok || kind != 0x02 {
		t.Errorf("the module does not export its memory")
	}
}

// wasmExports returns the names and kinds (0 function, 2 memory) of a module's exports.
func wasmExports(b []byte) (map[string]byte, error) {
	if !bytes.HasPrefix(b, []byte("\x00asm\x01\x00\x00\x00")) {
		return nil, fmt.Errorf("starts %q, not with the wasm magic and version 1", b[:min(8, len(b))])
	}
	b = b[8:]
	uleb := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errors.New("bad LEB128")
		}
		b = b[n:]
		return v, nil
	}
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		size, err := uleb()
		if err != nil || size > uint64(len(b)) {
			return nil, fmt.Errorf("section %d: bad size", id)
		}
		sec := b[:size]
		b = b[size:]
		if id != 7 {
			continue
		}
		b = sec
		count, err := uleb()
		if err != nil {
			return nil, err
		}
		exports := map[string]byte{}
		for range count {
			n, err := uleb()
			if err != nil || n+1 > uint64(len(b)) {
				return nil, errors.New("bad export name")
			}
			name, kind := string(b[:n]), b[n]
			b = b[n+1:]
			if _, err := uleb(); err != nil {
				return nil, err
			}
			exports[name] = kind
		}
		return exports, nil
	}
	return nil, errors.New("no export section")
}

// newHost returns a wasm host for a test. Its compilation cache compiles a module once,
// however often the test loads it.
func newHost(t *testing.T) *wasm.Host {
	t.Helper()
	h, err := wasm.NewHost(wasm.HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

// load loads a wrapper module with a JSON config.
func load(t *testing.T, h *wasm.Host, name string, mod []byte, config string) wrapper.Wrapper {
	t.Helper()
	w, err := h.Load(context.Background(), name, mod, wasm.Options{Config: []byte(config), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("load %s with config %s: %v", name, config, err)
	}
	return w
}

func newCall(node string, header map[string]string) *wrapper.Call {
	return &wrapper.Call{
		Service: "greeter", Endpoint: "Greeter.Hello", Node: node, Caller: "test",
		Header: header, Deadline: time.Now().Add(time.Minute),
	}
}

// inTestdata returns a new directory under this package's testdata, removed at the end
// of the test: a directory inside micro's module that ./... patterns skip.
func inTestdata(t *testing.T) string {
	t.Helper()
	made := false
	if _, err := os.Stat("testdata"); errors.Is(err, os.ErrNotExist) {
		made = true
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("testdata", "wrapper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		if made {
			os.Remove("testdata")
		}
	})
	return dir
}

// The generated project builds as a package of micro's module, and behaves as its
// README says.
func TestWrapperNewInModule(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(inTestdata(t), "hello")
	stdout, stderr, err := micro(t, "wrapper", "new", "-dir", dir, "hello")
	if err != nil {
		t.Fatalf("wrapper new: %v\nstderr: %s", err, stderr)
	}
	for _, f := range []string{"main.go", "main_test.go", "README.md"} {
		if !strings.Contains(stdout, filepath.Join(dir, f)) {
			t.Errorf("output %q does not name %s", stdout, f)
		}
	}
	if stderr != "" {
		t.Errorf("stderr = %q, want nothing inside micro's module", stderr)
	}
	if names := projectFiles(t, dir); !slices.Equal(names, []string{"README.md", "main.go", "main_test.go"}) {
		t.Errorf("wrote %v inside micro's module, want README.md, main.go and main_test.go", names)
	}
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	slashDir := filepath.ToSlash(dir)
	for _, want := range []string{
		"[wrappers.hello]",
		"micro wrapper build " + slashDir + "    # writes " + slashDir + "/hello.wasm",
		`wrappers = ["hello"]`,
		`source = "` + slashDir + `"`,
	} {
		if !bytes.Contains(readme, []byte(want)) {
			t.Errorf("README.md lacks %q", want)
		}
	}
	for _, f := range []string{"main.go", "main_test.go"} {
		src, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if formatted, err := format.Source(src); err != nil || !bytes.Equal(formatted, src) {
			t.Errorf("%s is not gofmt-ed (err %v)", f, err)
		}
	}

	mod := buildWrapper(t, dir)
	// Its tests pass, on the repository's SDK.
	goCmd(t, ".", nil, "test", "-count=1", "./"+filepath.ToSlash(dir))
	h := newHost(t)
	w := load(t, h, "hello", mod, `{"require": "X-User", "tag": "t1"}`)
	ctx := context.Background()
	v := w.OnRequest(ctx, newCall("n1", nil))
	if v.Action != wrapper.Reject || v.Status != 401 || v.Message != "missing header X-User" {
		t.Errorf("call without X-User: %+v, want a 401 rejection", v)
	}
	v = w.OnRequest(ctx, newCall("n1", map[string]string{"X-User": "ada"}))
	if v.Action != wrapper.Continue || v.Header["X-Wrapper-Tag"] != "t1" {
		t.Errorf("call with X-User: %+v, want continue with X-Wrapper-Tag: t1", v)
	}
	w.OnResponse(ctx, newCall("n1", map[string]string{"X-User": "ada"}), &wrapper.Result{Status: 500, Latency: time.Millisecond})

	// A bad config stops the load, naming the field.
	if _, err := h.Load(ctx, "hello", mod, wasm.Options{Config: []byte(`{"requier": "X"}`)}); err == nil || !strings.Contains(err.Error(), "requier") {
		t.Errorf("load with an unknown config field: %v, want an error naming it", err)
	}
}

// offline is the environment of a go command that may use neither the network nor a
// module cache: GOFLAGS=-mod=mod lets it fetch what go.mod lacks, and GOPROXY=off makes
// any fetch fail.
func offline(t *testing.T) []string {
	return []string{"GOPROXY=off", "GOFLAGS=-mod=mod", "GOWORK=off", "GOMODCACHE=" + t.TempDir()}
}

// goCmd runs the go command in dir with env added to this process's, and returns its
// output.
func goCmd(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the go command")
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// projectFiles returns the files under dir, relative to it, in slash form and sorted.
func projectFiles(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		names = append(names, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// Outside any module the project is a module of its own that carries the SDK: the
// non-test sources of micro's abi/wrapper and sdk/wrapper, as they are in this
// repository. It tests and builds offline, and go.mod needs no change for that.
func TestWrapperNewStandalone(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "proj")
	// Flags after the name work too.
	stdout, stderr, err := micro(t, "wrapper", "new", "hello-2", "-dir", dir)
	if err != nil {
		t.Fatalf("wrapper new: %v\nstderr: %s", err, stderr)
	}
	if stderr != "" {
		t.Errorf("stderr = %q, want nothing outside any module", stderr)
	}
	for _, want := range []string{filepath.Join(dir, "go.mod"), filepath.Join(dir, "internal", "microsdk") + " (the wrapper SDK that micro dev carries)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output %q does not name %s", stdout, want)
		}
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	rootMod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go \S+$`).Find(rootMod)
	for _, want := range []string{"module hello-2\n", "\n" + string(goLine) + "\n", "require github.com/microhost/micro v0.0.0\n",
		"replace github.com/microhost/micro => ./internal/microsdk\n"} {
		if !bytes.Contains(gomod, []byte(want)) {
			t.Errorf("go.mod lacks %q:\n%s", want, gomod)
		}
	}
	sdkMod, err := os.ReadFile(filepath.Join(dir, "internal", "microsdk", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(sdkMod, []byte("\nmodule github.com/microhost/micro\n\n"+string(goLine)+"\n")) {
		t.Errorf("internal/microsdk/go.mod:\n%s", sdkMod)
	}

	// The copy is the repository's SDK, without its tests.
	want := []string{"README.md", "go.mod", "internal/microsdk/README.md", "internal/microsdk/go.mod", "main.go", "main_test.go"}
	for _, pkg := range []string{"abi/wrapper", "sdk/wrapper"} {
		for _, f := range projectFiles(t, filepath.Join("../..", pkg)) {
			if path.Ext(f) != ".go" || strings.HasSuffix(f, "_test.go") || strings.Contains("/"+f, "/testdata/") {
				continue
			}
			name := path.Join("internal/microsdk", pkg, f)
			want = append(want, name)
			src, err := os.ReadFile(filepath.Join("../..", pkg, f))
			if err != nil {
				t.Fatal(err)
			}
			if cp, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(cp, src) {
				t.Errorf("%s differs from %s/%s (err %v)", name, pkg, f, err)
			}
		}
	}
	slices.Sort(want)
	if got := projectFiles(t, dir); !slices.Equal(got, want) {
		t.Errorf("wrote %v\nwant %v", got, want)
	}

	// Offline, its tests pass and it builds, with micro and with plain go build.
	env := offline(t)
	goCmd(t, dir, env, "test", "-count=1", "./...")
	goCmd(t, dir, append(env, "GOOS=wasip1", "GOARCH=wasm"), "build", "-buildmode=c-shared", "-o", filepath.Join(t.TempDir(), "plain.wasm"), ".")
	buildWrapper(t, dir) // TestWrapperNewInModule loads the same code
	if after, err := os.ReadFile(filepath.Join(dir, "go.mod")); err != nil || !bytes.Equal(after, gomod) {
		t.Errorf("go.mod changed in the builds (err %v):\n%s", err, after)
	}
}

// Every package that the SDK copy holds imports only the standard library and the
// copy's other packages: the copy builds on its own.
func TestWrapperSDKSelfContained(t *testing.T) {
	files, _, err := sdkFiles(microsrc.WrapperSDK, "test")
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]bool{}
	for _, f := range files {
		dirs[path.Dir(f.name)] = true
	}
	for _, f := range files {
		if path.Ext(f.name) != ".go" {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f.name, f.data, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		for _, imp := range parsed.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			rest, ours := strings.CutPrefix(p, microModule+"/")
			switch {
			case ours && !dirs[path.Join(sdkDir, rest)]:
				t.Errorf("%s imports %s, which the SDK that micro carries lacks (add it to the go:embed in sdk.go, or drop the import)", f.name, p)
			case !ours && strings.Contains(strings.Split(p, "/")[0], "."):
				t.Errorf("%s imports %s, a module that the SDK copy cannot carry", f.name, p)
			}
		}
	}
}

// Inside a module that does not provide micro's SDK, the wrapper is a module of its own,
// and a note says so.
func TestWrapperNewInForeignModule(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module example.com/x\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "w")
	_, stderr, err := micro(t, "wrapper", "new", "-dir", dir, "w")
	if err != nil {
		t.Fatal(err)
	}
	if want := "inside module example.com/x (" + filepath.Join(root, "go.mod") + "), which does not require github.com/microhost/micro"; !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want a note %q", stderr, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "internal", "microsdk", "sdk", "wrapper", "wrapper.go")); err != nil {
		t.Errorf("no SDK copy: %v", err)
	}
}

// Inside a module that requires micro, the wrapper is a package of it.
func TestWrapperNewInModuleRequiringMicro(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	gomod := "module example.com/y\n\ngo 1.26\n\nrequire (\n\tgithub.com/microhost/micro v0.0.0\n)\n"
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "wrappers", "w")
	stdout, stderr, err := micro(t, "wrapper", "new", "-dir", dir, "w")
	if err != nil || stderr != "" {
		t.Fatalf("wrapper new: %v, stderr %q", err, stderr)
	}
	if strings.Contains(stdout, "microsdk") {
		t.Errorf("output %q names an SDK copy", stdout)
	}
	if names := projectFiles(t, dir); !slices.Equal(names, []string{"README.md", "main.go", "main_test.go"}) {
		t.Errorf("wrote %v, want README.md, main.go and main_test.go", names)
	}
	if readme, err := os.ReadFile(filepath.Join(dir, "README.md")); err != nil || !bytes.Contains(readme, []byte("a package of module example.com/y")) {
		t.Errorf("README.md does not name the module (err %v)", err)
	}
}

func TestWrapperNewHelp(t *testing.T) {
	_, stderr, err := micro(t, "wrapper", "new", "-h")
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("wrapper new -h: %v", err)
	}
	for _, want := range []string{"Where the SDK comes from", "carries the\n    sources of the SDK", "DIR/internal/microsdk", "no network"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("help lacks %q:\n%s", want, stderr)
		}
	}
}

// A project goes only into a new or empty directory, and an error names the one in the way.
func TestWrapperNewRefusesToOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "proj")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	readme := filepath.Join(dir, "README.md")
	if err := os.WriteFile(readme, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := micro(t, "wrapper", "new", "-dir", dir, "x")
	if err == nil || !strings.Contains(err.Error(), dir+" already exists and is not empty") {
		t.Fatalf("err = %v, want a refusal naming %s", err, dir)
	}
	if b, _ := os.ReadFile(readme); string(b) != "mine" {
		t.Errorf("README.md was changed to %q", b)
	}
	if names := projectFiles(t, dir); !slices.Equal(names, []string{"README.md"}) {
		t.Errorf("files were written next to the existing one: %v", names)
	}

	_, _, err = micro(t, "wrapper", "new", "-dir", readme, "x")
	if err == nil || !strings.Contains(err.Error(), readme+" already exists and is not a directory") {
		t.Errorf("err = %v, want a refusal naming %s", err, readme)
	}

	empty := t.TempDir()
	if _, _, err := micro(t, "wrapper", "new", "-dir", empty, "x"); err != nil {
		t.Errorf("wrapper new into an empty directory: %v", err)
	}
}

func TestWrapperNewNames(t *testing.T) {
	for _, name := range []string{"a", "auth", "auth-check", "v2", "a1-b2"} {
		if err := checkWrapperName(name); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	if err := checkWrapperName("-a"); err == nil {
		t.Error(`"-a" accepted`)
	}
	for _, name := range []string{"", "Auth", "1auth", "a-", "a_b", "a.b", "a/b", "../a", "a b", strings.Repeat("a", 64)} {
		_, _, err := micro(t, "wrapper", "new", "-dir", t.TempDir(), name)
		if err == nil || !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("wrapper new %q: %v, want an invalid name error", name, err)
		}
	}
}

func TestWrapperUsage(t *testing.T) {
	for _, args := range [][]string{
		{"wrapper"},
		{"wrapper", "frob"},
		{"wrapper", "new"},
		{"wrapper", "new", "a", "b"},
		{"wrapper", "build"},
		{"wrapper", "build", "a", "b"},
		{"wrapper", "build", "-nope", "a"},
	} {
		if _, _, err := micro(t, args...); err == nil {
			t.Errorf("micro %s: no error", strings.Join(args, " "))
		}
	}
	stdout, _, err := micro(t, "wrapper", "help")
	if err != nil || !strings.Contains(stdout, "micro wrapper new") {
		t.Errorf("wrapper help: %v, %q", err, stdout)
	}
	_, _, err = micro(t, "wrapper", "build", filepath.Join(t.TempDir(), "missing"))
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("build of a missing directory: %v", err)
	}
}

// The shipped wrappers build, load and do their job.
func TestShippedWrappers(t *testing.T) {
	ctx := context.Background()
	t.Run("ratelimit", func(t *testing.T) {
		t.Parallel()
		mod := buildWrapper(t, "../../plugins/wrapper-ratelimit")
		h := newHost(t)
		w := load(t, h, "ratelimit", mod, `{"rate": 0.5, "burst": 2, "key": "caller"}`)
		for i := range 2 {
			if v := w.OnRequest(ctx, newCall("n1", nil)); v.Action != wrapper.Continue {
				t.Fatalf("call %d of the burst: %+v", i+1, v)
			}
		}
		v := w.OnRequest(ctx, newCall("n1", nil))
		want := `rate limit of 0.5/s exceeded for caller "test"`
		if v.Action != wrapper.Reject || v.Status != 429 || v.Message != want || v.ReplyHeader["Retry-After"] != "2" {
			t.Fatalf("call past the burst: %+v, want 429 %q with Retry-After: 2", v, want)
		}
		other := newCall("n1", nil)
		other.Caller = "another"
		if v := w.OnRequest(ctx, other); v.Action != wrapper.Continue {
			t.Fatalf("another caller: %+v", v)
		}

		if _, err := h.Load(ctx, "ratelimit", mod, wasm.Options{Config: []byte(`{"rate": 0}`)}); err == nil || !strings.Contains(err.Error(), "rate:") {
			t.Errorf("load with rate 0: %v, want an error naming rate", err)
		}
	})
	t.Run("breaker", func(t *testing.T) {
		t.Parallel()
		mod := buildWrapper(t, "../../plugins/wrapper-breaker")
		h := newHost(t)
		w := load(t, h, "breaker", mod, `{"consecutive_failures": 2, "cooldown": "1h"}`)
		for range 2 {
			c := newCall("n1", nil)
			if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
				t.Fatalf("closed breaker: %+v", v)
			}
			w.OnResponse(ctx, c, &wrapper.Result{Status: 503, Latency: time.Millisecond, Fault: true})
		}
		v := w.OnRequest(ctx, newCall("n1", nil))
		if v.Action != wrapper.RejectNode || v.Message != "breaker open for node n1, endpoint Greeter.Hello" {
			t.Fatalf("after 2 failures: %+v, want the node rejected for the endpoint", v)
		}
		if v := w.OnRequest(ctx, newCall("n2", nil)); v.Action != wrapper.Continue {
			t.Fatalf("another node: %+v", v)
		}

		ws := load(t, h, "breaker", mod, `{"key": "service", "consecutive_failures": 1, "cooldown": "1h"}`)
		c := newCall("n1", nil)
		ws.OnRequest(ctx, c)
		ws.OnResponse(ctx, c, &wrapper.Result{Err: "connection refused", Latency: time.Millisecond, Fault: true})
		v = ws.OnRequest(ctx, newCall("n2", nil))
		if v.Action != wrapper.Reject || v.Status != 503 || v.Message != "breaker open for service greeter" {
			t.Fatalf("per service, after a failure: %+v, want a 503 rejection", v)
		}
	})
}

func TestFindModule(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("// c\nmodule example.com/x\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	file, mod, err := findModule(filepath.Join(sub, "not", "yet"))
	if err != nil || file != filepath.Join(root, "go.mod") || mod != "example.com/x" {
		t.Fatalf("findModule = %q, %q, %v", file, mod, err)
	}
}
