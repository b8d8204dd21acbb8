package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOrphanGoRun SIGKILLs a micro whose app runs through `go run`, as the default
// micro.toml runs the greeter: no process of the app outlives micro, neither the go command
// that micro started nor the greeter that go built and started.
func TestOrphanGoRun(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	m := startMicro(t, baseConfig(t.TempDir(), fmt.Sprintf(`
[services.greeter]
command = ["go", "run", %q]
dir = %q
health = "/health"
`, filepath.Join(root, "examples", "greeter"), root)))

	// The app's processes: those in the process groups of micro's children.
	groups := m.children()
	var procs []int
	for _, pgid := range groups {
		procs = append(procs, groupMembers(pgid)...)
	}
	t.Cleanup(func() { // should the test fail, leave no greeter behind
		for _, pgid := range groups {
			if len(groupMembers(pgid)) > 0 {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
			}
		}
	})
	var names []string
	for _, pid := range procs {
		names = append(names, describeProc(pid))
	}
	t.Logf("app processes: %s", strings.Join(names, ", "))
	if !strings.Contains(strings.Join(names, " "), "(greeter)") {
		t.Fatalf("no greeter among the app processes %v of micro's children %v", names, groups)
	}

	m.kill(syscall.SIGKILL)
	eventually(t, 5*time.Second, func() error {
		var alive []string
		for _, pid := range procs {
			if !zombie(pid) {
				alive = append(alive, describeProc(pid))
			}
		}
		if len(alive) > 0 {
			return fmt.Errorf("app processes outlive the killed micro: %s", strings.Join(alive, ", "))
		}
		return nil
	})
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, name := range stats {
		stat, err := os.ReadFile(name)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		f := bytes.Fields(stat[i+1:])
		if len(f) < 3 || f[0][0] == 'Z' || f[0][0] == 'X' || string(f[2]) != strconv.Itoa(pgid) {
			continue
		}
		if pid, err := strconv.Atoi(string(bytes.Fields(stat)[0])); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// describeProc names process pid for messages: its PID and command name.
func describeProc(pid int) string {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(string(comm)))
}
