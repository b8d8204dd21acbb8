package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// sdkDir is where a wrapper project made outside micro's module keeps the SDK, relative to
// the project, in slash form.
//
// The SDK comes from the micro binary itself: it embeds the sources of the packages a
// wrapper imports, abi/wrapper and sdk/wrapper with the packages under it (the root
// package micro embeds them, as go:embed cannot reach outside a package's directory).
// `micro wrapper new` writes them into sdkDir as a module of its own, whose path is
// micro's module path, and the project's go.mod requires micro's module at v0.0.0 and
// replaces it with sdkDir. The project then builds and tests with no network, no module
// cache and no checkout of micro, on the SDK of the micro that made it.
const sdkDir = "internal/microsdk"

// sdkFiles returns the files of the SDK copy, named relative to the project, and micro's
// go directive (e.g. "go 1.26.8"), which the project's go.mod states too. src is the SDK
// that micro carries, [micro.WrapperSDK]: the copy holds the non-test Go files of its
// packages, with a go.mod and a README that say where they came from.
func sdkFiles(src fs.FS, version string) (files []projectFile, goLine string, err error) {
	gomod, err := fs.ReadFile(src, "go.mod")
	if err != nil {
		return nil, "", fmt.Errorf("the SDK that micro carries: %w", err)
	}
	for line := range bytes.Lines(gomod) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == "go" {
			goLine = "go " + f[1]
		}
	}
	if goLine == "" {
		return nil, "", errors.New("the SDK that micro carries: micro's go.mod has no go line")
	}
	files = []projectFile{
		{path.Join(sdkDir, "go.mod"), fmt.Appendf(nil,
			"// The packages of %s that a wrapper imports, as micro %s carries them.\nmodule %s\n\n%s\n",
			microModule, version, microModule, goLine)},
		{path.Join(sdkDir, "README.md"), fmt.Appendf(nil, sdkReadme, microModule, version)},
	}
	err = fs.WalkDir(src, ".", func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && d.Name() == "testdata":
			return fs.SkipDir
		case d.IsDir() || path.Ext(p) != ".go" || strings.HasSuffix(p, "_test.go"):
			return nil
		}
		b, err := fs.ReadFile(src, p)
		if err != nil {
			return err
		}
		files = append(files, projectFile{path.Join(sdkDir, p), b})
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("the SDK that micro carries: %w", err)
	}
	return files, goLine, nil
}

// sdkReadme is the SDK copy's README.md; its arguments are micro's module path and version.
const sdkReadme = `# The micro wrapper SDK

A copy of the packages of %[1]s that a wrapper imports (abi/wrapper, and
sdk/wrapper with the packages under it), as micro %[2]s carries them, written by
` + "`micro wrapper new`" + `. The project's go.mod replaces %[1]s with this
directory, so the wrapper builds and tests with no network and no checkout of micro.

Leave the files as they are. To move to the SDK of another micro, make a scratch project
with that micro (` + "`micro wrapper new -dir /tmp/scratch x`" + `) and replace this directory
with its ` + "`" + sdkDir + "`" + `.
`
