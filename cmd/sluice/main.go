// Command sluice runs the sluice gateway and its companion tools.
//
// Each subcommand lives in its own file and registers itself in init, so the
// main function stays a thin dispatcher.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand of the sluice binary.
type command struct {
	summary string
	// run executes the subcommand with the arguments after its name and
	// returns the process exit code.
	run func(args []string) int
	// env lists the SLUICE_ variables the subcommand reads (see checkEnv).
	env func() []string
}

var commands = map[string]command{}

func register(name string, c command) { commands[name] = c }

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sluice <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'sluice <command> --help' for the flags and environment of a command.")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage(os.Stdout)
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "sluice: unknown command %q\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	checkEnvOrExit()
	os.Exit(c.run(os.Args[2:]))
}
