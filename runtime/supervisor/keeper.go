package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"
	"time"
)

// lifelineFD is the file descriptor on which a keeper inherits the read end of its lifeline:
// the first of exec.Cmd.ExtraFiles.
const lifelineFD = 3

// Keep runs the keeper of one app instance: the process that a Group starts in place of the
// app when Options.Keeper is set, which calls Keep with the arguments that follow
// Options.Keeper: the app's executable, then the app's argv, from argv[0]. The keeper leads
// the instance's process group and reads its lifeline, a pipe whose write end only micro
// holds, on file descriptor 3.
//
// Keep starts the app as its child, in its process group, with its own stdin, stdout,
// stderr, environment and working directory, and waits for it:
//   - When the lifeline breaks, that is when micro is gone however it died, SIGKILL
//     included, Keep kills the whole process group, the keeper too. So the app and any
//     process it started in its group, such as the program that `go run` builds and runs,
//     never outlive micro.
//   - SIGTERM, SIGINT and SIGHUP do not end the keeper: the Group signals the whole process
//     group, so the app has the signal as well, and the keeper waits for it to exit. After
//     such a signal, or when the app died of one, it also waits (on Linux) for the rest of
//     its process group, e.g. the program that `go run` started and that is still shutting
//     down, so that the lifeline covers them until they are gone.
//   - When the app exits, Keep returns its exit code. When a signal ended it, Keep ends the
//     keeper by the same signal if it is SIGTERM, SIGINT, SIGHUP or SIGKILL, and does not
//     return; for another signal, which the Go runtime would turn into a crash or ignore, it
//     returns 128 plus the signal's number, as a shell does.
//
// On Linux, the app also gets SIGKILL from the kernel when the keeper dies, e.g. when it is
// killed by hand; the Group then kills the rest of the process group.
//
// Keep returns an error, without starting anything, when args are missing, when there is no
// lifeline on fd 3 (the keeper was run by hand), or when the keeper does not lead its process
// group (which it would kill); and when the app cannot be started.
func Keep(args []string) (int, error) {
	lifeline, err := inheritLifeline()
	if err != nil {
		return 0, err
	}
	defer lifeline.Close()
	if len(args) < 2 {
		return 0, errors.New("supervisor: keeper: want the app's executable and its argv")
	}
	pgid := os.Getpid()
	if leader := syscall.Getpgrp(); leader != pgid {
		return 0, fmt.Errorf("supervisor: keeper: process %d is in process group %d, not the leader of its own, which it would kill", pgid, leader)
	}

	// The signals that the keeper outlives, to wait for the app, which has them too: a Group
	// signals the whole process group. Caught before the app starts, so that none ends the
	// keeper first.
	stops := []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, stops...)
	defer signal.Stop(sigs)

	app := &exec.Cmd{
		Path:        args[0],
		Args:        args[1:],
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: appProcAttr(),
	}
	if err := app.Start(); err != nil {
		return 0, fmt.Errorf("supervisor: keeper: starting %q: %w", args[1], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- app.Wait() }()
	lost := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, lifeline) // ends at EOF: micro is gone
		close(lost)
	}()

	stopping := false
	for {
		select {
		case <-sigs:
			stopping = true // the app has it too; how it exits decides
		case <-lost:
			return die(-pgid, syscall.SIGKILL)
		case err := <-exited:
			if app.ProcessState == nil {
				return 0, fmt.Errorf("supervisor: keeper: waiting for %q: %w", args[1], err)
			}
			ws, _ := app.ProcessState.Sys().(syscall.WaitStatus)
			// A stop, when the app died of a stop signal too: the keeper's own may still be
			// on its way, as the app's exit can overtake it.
			stopping = stopping || len(sigs) > 0 || (ws.Signaled() && slices.Contains(stops, os.Signal(ws.Signal())))
			if stopping && !awaitGroup(pgid, lost) {
				return die(-pgid, syscall.SIGKILL)
			}
			if ws.Signaled() {
				return die(pgid, ws.Signal())
			}
			return app.ProcessState.ExitCode(), nil
		}
	}
}

// awaitGroup waits until the keeper is the last live process of its group, pgid, and
// reports whether it is; it reports false when the lifeline breaks first. After a stop
// signal, the rest of the group may outlive the app, e.g. a program that `go run` started
// and that is still shutting down; the keeper stays to kill it should micro die meanwhile.
// Where the keeper cannot see its group (without /proc), it does not wait.
func awaitGroup(pgid int, lost <-chan struct{}) bool {
	interval := 5 * time.Millisecond
	for othersAlive(pgid, pgid) {
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-lost:
			t.Stop()
			return false
		}
		interval = min(2*interval, 100*time.Millisecond)
	}
	return true
}

// inheritLifeline returns the read end of the keeper's lifeline, inherited on lifelineFD. It
// keeps it from the app.
func inheritLifeline() (*os.File, error) {
	fail := func(err error) (*os.File, error) {
		return nil, fmt.Errorf("supervisor: keeper: no lifeline on fd %d (%w): the keeper is started by micro for each app instance it runs, not by hand", lifelineFD, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(lifelineFD, &st); err != nil {
		return fail(err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		return fail(errors.New("not a pipe"))
	}
	// Non-blocking, so that the runtime polls it and Close ends a Read in progress.
	if err := syscall.SetNonblock(lifelineFD, true); err != nil {
		return fail(err)
	}
	syscall.CloseOnExec(lifelineFD)
	return os.NewFile(lifelineFD, "lifeline"), nil
}

// die sends sig to target, the keeper or its process group, to end the keeper as the app
// ended, or to end the whole group. The signals that the Go runtime lets end a process
// quietly, SIGTERM, SIGINT, SIGHUP and SIGKILL, end it; for any other, and should the
// keeper outlive the signal, die returns 128 plus the signal's number.
func die(target int, sig syscall.Signal) (int, error) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGKILL:
		signal.Reset(sig)
		if err := syscall.Kill(target, sig); err != nil {
			return 0, fmt.Errorf("supervisor: keeper: sending %v to %d: %w", sig, target, err)
		}
		// The signal is on its way; give the runtime a moment to act on it.
		time.Sleep(time.Second)
	}
	return 128 + int(sig), nil
}
