// Package scripts holds sluice's Lua scripts, embedded from their .lua files,
// as *redis.Script handles. Each decision of the limiter and the semaphore is
// one script run: atomic on the Redis node that owns the budget's hash slot.
//
// Every script is common.lua (shared helpers: Redis time, GCRA, queue
// upkeep) followed by its own file, whose header documents KEYS, ARGV and the
// reply. Run them with Script.Run, which sends EVALSHA and falls back to EVAL
// when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
package scripts

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

//go:embed *.lua
var files embed.FS

var (
	// Reserve reserves tokens of a token bucket (reserve.lua).
	Reserve = load("reserve.lua")
	// Cancel gives back the latest reservation of a bucket (cancel.lua).
	Cancel = load("cancel.lua")
	// Acquire takes a semaphore slot, and optionally a bucket token with it,
	// for the head of the FIFO queue (acquire.lua).
	Acquire = load("acquire.lua")
	// Release releases leases and withdraws waiters (release.lua).
	Release = load("release.lua")
	// Keepalive renews a replica's leases and queue places (keepalive.lua).
	Keepalive = load("keepalive.lua")
)

// All lists every script, e.g. to preload them or check that they run.
var All = []*redis.Script{Reserve, Cancel, Acquire, Release, Keepalive}

func load(name string) *redis.Script {
	common, err := files.ReadFile("common.lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	body, err := files.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(common) + "\n" + string(body))
}
