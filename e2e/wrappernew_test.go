package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestWrapperNewAnywhere: a wrapper author with no checkout of micro and no network runs
// `micro wrapper new` in a directory of their own. The project's tests pass, it builds
// with micro and with plain go build, and a running micro loads the .wasm and applies it
// to calls.
func TestWrapperNewAnywhere(t *testing.T) {
	t.Parallel()
	// No network, an empty module cache and GOPATH, another HOME: only what micro wrote
	// can satisfy go.mod. The build cache stays, for speed; it holds no modules.
	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	gopath := t.TempDir()
	env := append(os.Environ(),
		"GOPROXY=off", "GOFLAGS=-mod=mod", "GOWORK=off", "GOTOOLCHAIN=local",
		"HOME="+t.TempDir(), "GOPATH="+gopath, "GOMODCACHE="+filepath.Join(gopath, "pkg", "mod"),
		"GOCACHE="+strings.TrimSpace(string(gocache)))
	work := t.TempDir()
	// run runs a command in dir, with the environment above and extra.
	run := func(dir string, extra []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir, cmd.Env = dir, slices.Concat(env, extra)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
		}
		return string(out)
	}

	out := run(work, nil, bins.micro, "wrapper", "new", "hello")
	if !strings.Contains(out, filepath.Join("hello", "go.mod")) || !strings.Contains(out, filepath.Join("hello", "internal", "microsdk")) {
		t.Fatalf("wrapper new outside micro's repository wrote no module of its own:\n%s", out)
	}
	project := filepath.Join(work, "hello")
	gomod, err := os.ReadFile(filepath.Join(project, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if out := run(project, nil, "go", "test", "-count=1", "-v", "./..."); !strings.Contains(out, "--- PASS: TestRequireAndTag") {
		t.Fatalf("go test ran no template test:\n%s", out)
	}
	// Plain go build, as README.md has it, and micro's.
	run(project, []string{"GOOS=wasip1", "GOARCH=wasm"}, "go", "build", "-buildmode=c-shared", "-o", filepath.Join(t.TempDir(), "plain.wasm"), ".")
	run(work, nil, bins.micro, "wrapper", "build", "hello")
	if after, err := os.ReadFile(filepath.Join(project, "go.mod")); err != nil || !bytes.Equal(after, gomod) {
		t.Errorf("go.mod changed in the builds (err %v):\n%s", err, after)
	}
	if entries, err := os.ReadDir(filepath.Join(gopath, "pkg", "mod")); err == nil && len(entries) > 0 {
		t.Errorf("the builds filled the module cache: %v", entries)
	}

	// In micro: calls to count without X-User are refused, the others carry the tag.
	cfg := baseConfig(t.TempDir(), counterService("a", filepath.Join(t.TempDir(), "count"), t.TempDir())+fmt.Sprintf(`
[wrappers.hello]
path = %q
[wrappers.hello.config]
require = "X-User"
tag = "from-e2e"
`, filepath.Join(project, "hello.wasm")))
	m := startMicro(t, strings.Replace(cfg, "[server]\n", "[server]\nwrappers = [\"hello\"]\n", 1))
	r, err := m.post("/count/echo/hi", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if e := r.json(t); r.status != 401 || e["detail"] != "missing header X-User" {
		t.Errorf("a call without X-User: %d %s, want 401 missing header X-User", r.status, r.body)
	}
	r, err = m.post("/count/echo/hi", "", map[string]string{"X-User": "ada"})
	if err != nil {
		t.Fatal(err)
	}
	var echo struct{ Header http.Header }
	if err := json.Unmarshal(r.body, &echo); r.status != 200 || err != nil {
		t.Fatalf("a call with X-User: %d %s", r.status, r.body)
	}
	if got := echo.Header.Get("X-Wrapper-Tag"); got != "from-e2e" {
		t.Errorf("the app got X-Wrapper-Tag %q, want from-e2e (headers: %v)", got, echo.Header)
	}
}
