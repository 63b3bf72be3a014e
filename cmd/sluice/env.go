package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/server"
)

// deploymentEnv are SLUICE_ variables that no command reads but the
// project's deployment files do: docker-compose's image of the gateway.
var deploymentEnv = []string{"SLUICE_IMAGE"}

// serveEnv is what serve and demo read: the gateway's configuration.
func serveEnv() []string {
	var names []string
	for _, v := range server.Variables() {
		names = append(names, v.Name)
	}
	return names
}

// knownEnv returns every SLUICE_ variable some sluice command (or the
// deployment files) reads.
func knownEnv() map[string]bool {
	known := map[string]bool{}
	for _, name := range deploymentEnv {
		known[name] = true
	}
	for _, c := range commands {
		if c.env == nil {
			continue
		}
		for _, name := range c.env() {
			known[name] = true
		}
	}
	return known
}

// checkEnv returns an error naming the SLUICE_ variables of environ that no
// sluice command reads: a typo such as SLUICE_CONCURENCY must not silently
// leave the default in place. (The test harness's own switches use the
// SLUICETEST_ prefix.)
func checkEnv(environ []string) error {
	known := knownEnv()
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SLUICE_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	var b strings.Builder
	for i, name := range unknown {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(name)
		if near := nearest(name, known); near != "" {
			fmt.Fprintf(&b, " (did you mean %s?)", near)
		}
	}
	noun := "variable"
	if len(unknown) > 1 {
		noun = "variables"
	}
	return fmt.Errorf("unknown %s %s: no sluice command reads it; fix or unset it (see 'sluice <command> --help')", noun, b.String())
}

// nearest returns the known name closest to name, if it is at most 3 edits
// away (a typo), else "".
func nearest(name string, known map[string]bool) string {
	best, bestDist := "", 4
	for k := range known {
		if d := editDistance(name, k); d < bestDist || d == bestDist && k < best {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkEnvOrExit is main's check before any command runs.
func checkEnvOrExit() {
	if err := checkEnv(os.Environ()); err != nil {
		fmt.Fprintln(os.Stderr, "sluice:", err)
		os.Exit(2)
	}
}
