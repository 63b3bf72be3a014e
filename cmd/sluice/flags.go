package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// toolFlagSet is a flag.FlagSet whose flags may mirror environment
// variables (a flag given on the command line wins), with a usage that
// lists them and one-line errors (exit 2).
type toolFlagSet struct {
	*flag.FlagSet
	cmd, about string
	env        map[string]string // flag name -> variable
}

func newToolFlagSet(cmd, about string) *toolFlagSet {
	fs := flag.NewFlagSet("sluice "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &toolFlagSet{FlagSet: fs, cmd: cmd, about: about, env: map[string]string{}}
}

// String, Int, Float64, Duration and Bool define a flag and, when env is
// not empty, the variable it mirrors.
func (f *toolFlagSet) String(name, def, usage, env string) *string {
	return mirror(f, name, env, f.FlagSet.String(name, def, usage))
}

func (f *toolFlagSet) Int(name string, def int, usage, env string) *int {
	return mirror(f, name, env, f.FlagSet.Int(name, def, usage))
}

func (f *toolFlagSet) Float64(name string, def float64, usage, env string) *float64 {
	return mirror(f, name, env, f.FlagSet.Float64(name, def, usage))
}

func (f *toolFlagSet) Duration(name string, def time.Duration, usage, env string) *time.Duration {
	return mirror(f, name, env, f.FlagSet.Duration(name, def, usage))
}

func (f *toolFlagSet) Bool(name string, def bool, usage, env string) *bool {
	return mirror(f, name, env, f.FlagSet.Bool(name, def, usage))
}

// mirror records that flag name mirrors the variable env, and returns p.
func mirror[T any](f *toolFlagSet, name, env string, p *T) *T {
	f.env[name] = env
	return p
}

// envNames returns the variables the flags mirror.
func (f *toolFlagSet) envNames() []string {
	var names []string
	for _, env := range f.env {
		if env != "" {
			names = append(names, env)
		}
	}
	return names
}

// parse applies the environment, then args; ok is false when the command
// should exit with code (0 after --help, 2 after an error).
func (f *toolFlagSet) parse(args []string) (code int, ok bool) {
	var envErr error
	f.VisitAll(func(fl *flag.Flag) {
		name := f.env[fl.Name]
		if val, set := os.LookupEnv(name); name != "" && set && envErr == nil {
			if err := f.Set(fl.Name, val); err != nil {
				envErr = fmt.Errorf("%s=%q: %v", name, val, err)
			}
		}
	})
	if envErr != nil {
		return f.fail("%v", envErr), false
	}
	err := f.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.usage(os.Stdout)
		return 0, false
	case err != nil:
		return f.fail("%v (see --help)", err), false
	case f.NArg() > 0:
		return f.fail("unexpected argument %q (see --help)", f.Arg(0)), false
	}
	return 0, true
}

// fail prints one error line and returns exit code 2.
func (f *toolFlagSet) fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "sluice %s: %s\n", f.cmd, fmt.Sprintf(format, args...))
	return 2
}

func (f *toolFlagSet) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: sluice %s [flags]\n\n%s\n\nflags:\n", f.cmd, f.about)
	f.VisitAll(func(fl *flag.Flag) {
		arg, usage := flag.UnquoteUsage(fl)
		fmt.Fprintf(w, "  --%s\n    \t%s", strings.TrimSpace(fl.Name+" "+arg), usage)
		if fl.DefValue != "" && fl.DefValue != "0" && fl.DefValue != "0s" && fl.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", fl.DefValue)
		}
		if env := f.env[fl.Name]; env != "" {
			fmt.Fprintf(w, " [$%s]", env)
		}
		fmt.Fprintln(w)
	})
	if len(f.env) > 0 {
		fmt.Fprintln(w, "\nA flag given on the command line wins over its [$VARIABLE].")
	}
}
