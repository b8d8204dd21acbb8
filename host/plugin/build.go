package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// executable returns the plugin's executable: Path, or else the binary built from
// SourceDir into CacheDir, which it (re)builds when it is missing or stale.
func executable(ctx context.Context, k kind, c procConfig, log *slog.Logger) (string, error) {
	if c.Path != "" {
		path, err := exec.LookPath(c.Path)
		if err != nil {
			return "", fmt.Errorf("%s plugin %q: executable: %w", k.name, c.Name, err)
		}
		return path, nil
	}
	if c.SourceDir == "" || c.CacheDir == "" {
		return "", fmt.Errorf("%s plugin %q: no executable path, and no source and cache directory to build one", k.name, c.Name)
	}
	bin := filepath.Join(c.CacheDir, k.name+"-"+c.Name)
	why, err := stale(bin, c.SourceDir)
	if err != nil {
		return "", fmt.Errorf("%s plugin %q: %w", k.name, c.Name, err)
	}
	if why == "" {
		why, err = staleModule(bin, c.SourceDir)
		if err != nil {
			return "", fmt.Errorf("%s plugin %q: %w", k.name, c.Name, err)
		}
	}
	if why == "" {
		return bin, nil
	}
	log.Info("building "+k.name+" plugin", "dir", c.SourceDir, "out", bin, "reason", why)
	start := time.Now()
	if err := build(ctx, c.SourceDir, bin); err != nil {
		return "", fmt.Errorf("%s plugin %q: %w", k.name, c.Name, err)
	}
	log.Info("built "+k.name+" plugin", "out", bin, "took", time.Since(start).Round(time.Millisecond))
	return bin, nil
}

// stale says why bin needs a build from the Go package in dir: it is missing, or a .go,
// go.mod or go.sum file under dir is newer. It returns "" when bin is up to date as far as
// dir tells. (Changes to other packages of the module, such as sdk/, are not seen: delete
// the binary to rebuild it.)
func stale(bin, dir string) (string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("source directory: %w", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("source directory %s is not a directory", dir)
	}
	bst, err := os.Stat(bin)
	if errors.Is(err, fs.ErrNotExist) {
		return "no binary yet", nil
	}
	if err != nil {
		return "", fmt.Errorf("cached binary: %w", err)
	}
	built := bst.ModTime()
	var why string
	errFound := errors.New("found")
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() || !(strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.ModTime().After(built) {
			why = path + " is newer than the binary"
			return errFound
		}
		return nil
	})
	if err != nil && err != errFound {
		return "", fmt.Errorf("source directory %s: %w", dir, err)
	}
	return why, nil
}

// staleModule says why bin needs a build when the go.mod or go.sum of the module that
// holds dir (found upwards from dir) is newer than bin, and returns "" otherwise.
func staleModule(bin, dir string) (string, error) {
	bst, err := os.Stat(bin)
	if err != nil {
		return "", fmt.Errorf("cached binary: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("source directory: %w", err)
	}
	for d := abs; ; d = filepath.Dir(d) {
		mod := filepath.Join(d, "go.mod")
		if _, err := os.Stat(mod); err == nil {
			for _, f := range []string{mod, filepath.Join(d, "go.sum")} {
				if st, err := os.Stat(f); err == nil && st.ModTime().After(bst.ModTime()) {
					return f + " is newer than the binary", nil
				}
			}
			return "", nil
		}
		if filepath.Dir(d) == d {
			return "", nil // no module: go build will say so
		}
	}
}

// build runs go build on the package in dir, writing bin. It builds into a temporary
// directory beside bin and renames, so that a concurrent start never sees half a binary.
func build(ctx context.Context, dir, bin string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build %s: the go command is needed to build a plugin from source: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return fmt.Errorf("build %s: cache directory: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(bin), ".build-")
	if err != nil {
		return fmt.Errorf("build %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, filepath.Base(bin))
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, ".")
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: go build: %w\n%s", dir, err, strings.TrimSpace(string(msg)))
	}
	if err := os.Rename(out, bin); err != nil {
		return fmt.Errorf("build %s: %w", dir, err)
	}
	return nil
}

// checkPin returns an error unless the file at path has the sha256 digest want (hex).
func checkPin(k kind, name, path, want string) error {
	want = strings.ToLower(strings.TrimSpace(want))
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%s plugin %q: sha256 pin %q is not 64 hex digits", k.name, name, want)
	}
	got, err := fileSHA256(path)
	if err != nil {
		return fmt.Errorf("%s plugin %q: check sha256 pin: %w", k.name, name, err)
	}
	if got != want {
		return fmt.Errorf("%s plugin %q: %s has sha256 %s, but sha256 %s is pinned; refusing to start it",
			k.name, name, path, got, want)
	}
	return nil
}

// fileSHA256 returns the hex sha256 digest of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
