package wasm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// How wrapper guests are built. -trimpath makes the output independent of where the
// sources are, so that the compilation cache, keyed by the module's bytes, serves a build
// of the same sources in another place.
var (
	guestEnv   = []string{"GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0"}
	buildFlags = []string{"-buildmode=c-shared", "-trimpath"}
)

// Build compiles the Go package main in srcDir into a wrapper guest at outPath, with
// GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath, using the go command on
// PATH. The
// file at outPath is replaced atomically, so a reader never sees half of it. The error
// carries the compiler's output.
func Build(ctx context.Context, srcDir, outPath string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build wrapper %s: the go command is needed to build a wrapper from source: %w", srcDir, err)
	}
	out, err := filepath.Abs(outPath)
	if err != nil {
		return fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".build-*.wasm")
	if err != nil {
		return fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())

	args := append(append([]string{"build"}, buildFlags...), "-o", tmp.Name(), ".")
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), guestEnv...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build wrapper %s: go build: %w\n%s", srcDir, err, strings.TrimSpace(output.String()))
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	return nil
}

// BuildCached builds the wrapper in srcDir into cacheDir, unless the cache already holds a
// build of the same sources, and returns the .wasm file's path. The sources are every file
// the build reads outside the module cache and GOROOT (the package, its local
// dependencies, such as sdk/wrapper in the micro repo, go.mod and go.sum), the versions of
// the other modules, and the Go version, as `go list -deps` reports them. It removes the
// older builds of srcDir from cacheDir.
func BuildCached(ctx context.Context, srcDir, cacheDir string) (string, error) {
	abs, err := filepath.Abs(srcDir)
	if err != nil {
		return "", fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	key, err := sourceKey(ctx, abs)
	if err != nil {
		return "", fmt.Errorf("build wrapper %s: %w", srcDir, err)
	}
	dirSum := sha256.Sum256([]byte(abs))
	prefix := fmt.Sprintf("%s-%s-", filepath.Base(abs), hex.EncodeToString(dirSum[:4]))
	out := filepath.Join(cacheDir, prefix+key+".wasm")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := Build(ctx, abs, out); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(cacheDir, prefix+"*.wasm"))
	for _, f := range old {
		if f != out {
			os.Remove(f)
		}
	}
	return out, nil
}

// listedPackage is what sourceKey reads of `go list -json`.
type listedPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	EmbedFiles []string
	Module     *struct {
		Path    string
		Version string
		GoMod   string
		Main    bool
	}
}

// sourceKey hashes what a build of dir reads; see BuildCached.
func sourceKey(ctx context.Context, dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build a wrapper from source: %w", err)
	}
	run := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, goBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), guestEnv...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go %s: %w\n%s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	env, err := run("env", "GOVERSION", "GOFLAGS", "GOEXPERIMENT")
	if err != nil {
		return "", err
	}
	list, err := run("list", "-deps", "-json=ImportPath,Dir,Standard,GoFiles,EmbedFiles,Module", ".")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "env %q %q %q\n", env, guestEnv, buildFlags)
	hashFile := func(path string) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "file %q\n", path)
		_, err = io.Copy(h, f)
		return err
	}
	goMods := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(list))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("go list: %w", err)
		}
		switch {
		case p.Standard:
			fmt.Fprintf(h, "std %s\n", p.ImportPath)
		case p.Module != nil && p.Module.Version != "" && !p.Module.Main:
			// A module from the module cache, which never changes under a version.
			fmt.Fprintf(h, "mod %s %s %s\n", p.ImportPath, p.Module.Path, p.Module.Version)
		default:
			fmt.Fprintf(h, "pkg %s %s\n", p.ImportPath, p.Dir)
			for _, f := range append(p.GoFiles, p.EmbedFiles...) {
				if err := hashFile(filepath.Join(p.Dir, f)); err != nil {
					return "", err
				}
			}
			if p.Module != nil && p.Module.GoMod != "" {
				goMods[p.Module.GoMod] = true
			}
		}
	}
	for _, gm := range slices.Sorted(maps.Keys(goMods)) {
		for _, f := range []string{gm, strings.TrimSuffix(gm, ".mod") + ".sum"} {
			if err := hashFile(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), nil
}
