package main

import (
	"fmt"
	"io"
	"os"

	"github.com/microhost/micro/runtime/supervisor"
)

// keeperCommand is the hidden command by which micro runs itself as the keeper of an app
// instance (see supervisor.Keep). `micro run` starts it; it is not for people, so the usage
// does not list it.
const keeperCommand = "__keeper"

// keeperMain runs the keeper on the arguments that follow keeperCommand and returns micro's
// exit code: the app's, or 1 when the keeper cannot run it.
func keeperMain(args []string, stderr io.Writer) int {
	code, err := supervisor.Keep(args)
	if err != nil {
		fmt.Fprintln(stderr, "micro:", err)
		return 1
	}
	return code
}

// keeperArgv is the argv prefix that starts this micro as a keeper: supervisor.Options.Keeper.
func keeperArgv() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding micro's executable to keep apps with: %w", err)
	}
	return []string{exe, keeperCommand}, nil
}
