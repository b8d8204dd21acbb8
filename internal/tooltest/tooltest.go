// Package tooltest finds the tool binaries that tests run against (Consul, Jaeger), and
// builds one with its tools/NAME/build.sh when it is missing, so that the README's test
// command works on a fresh machine; and it runs them for a test, on free loopback ports. It never skips a test: the tests that need a tool
// must run.
package tooltest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Binary returns the path of tool name's binary: $env when set, else
// <repo>/.cache/bin/NAME, else NAME on PATH. When there is none it runs
// <repo>/tools/NAME/build.sh, which builds the pinned version into <repo>/.cache/bin
// (minutes, once), and fails the test when that fails.
func Binary(t testing.TB, name, env string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if !isExecutable(p) {
			t.Fatalf("%s=%s is not an executable file", env, p)
		}
		return p
	}
	script := filepath.Join("tools", name, "build.sh")
	root, rootErr := repoRoot(script)
	if rootErr == nil {
		if p := filepath.Join(root, ".cache", "bin", name); isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if rootErr != nil {
		t.Fatalf("no %s binary (set %s or put %s on PATH), and cannot build one: %v", name, env, name, rootErr)
	}
	script = filepath.Join(root, script)
	t.Logf("no %s binary; building it with %s (takes minutes, once)", name, script)
	out, err := exec.Command("bash", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
	p := filepath.Join(root, ".cache", "bin", name)
	if !isExecutable(p) {
		t.Fatalf("%s ran but %s is missing", script, p)
	}
	return p
}

// repoRoot finds the repository root: the nearest directory at or above the working
// directory (a test's package directory) that has the file rel.
func repoRoot(rel string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, rel)); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no %s at or above %s", rel, wd)
		}
	}
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
