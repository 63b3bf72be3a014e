// Package scripts holds sluice's Lua scripts as files, so that readers find
// the heart of the project at the top of the repository. It is not API: the
// only export is the embedded files, which sluice's internal/redisstate
// package loads, joins with common.lua and runs. Each file opens with the
// KEYS, ARGV and reply it expects; that order is private to sluice and may
// change in any release.
package scripts

import "embed"

// FS holds the .lua files: common.lua (helpers prepended to every script)
// and one file per script.
//
//go:embed *.lua
var FS embed.FS
