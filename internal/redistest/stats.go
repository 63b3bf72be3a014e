package redistest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// CommandStats returns how many times each command ran since the server
// started or since [ResetStats], from INFO commandstats: e.g. "evalsha": 12.
// Names are lower case; Redis 7 names subcommands "client|setname". For a
// [redis.ClusterClient] the counts of all masters are added up.
//
// The counts are server-wide: on the shared server of [New] they include
// other tests' commands, so count on a server of your own.
func CommandStats(ctx context.Context, c redis.UniversalClient) (map[string]int64, error) {
	var mu sync.Mutex
	stats := make(map[string]int64)
	err := forEachMaster(ctx, c, func(ctx context.Context, node redis.Cmdable) error {
		info, err := node.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for line := range strings.Lines(info) {
			// cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,...
			name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
			name, isCmd := strings.CutPrefix(name, "cmdstat_")
			if !ok || !isCmd {
				continue
			}
			for f := range strings.SplitSeq(fields, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						return fmt.Errorf("redistest: INFO commandstats: %q: %w", line, err)
					}
					stats[name] += n
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return stats, nil
}

// ResetStats zeroes the statistics that [CommandStats] reads (CONFIG
// RESETSTAT), on every master of a cluster.
func ResetStats(ctx context.Context, c redis.UniversalClient) error {
	return forEachMaster(ctx, c, func(ctx context.Context, node redis.Cmdable) error {
		return node.ConfigResetStat(ctx).Err()
	})
}

// KeysWithoutTTL returns the keys matching pattern (SCAN MATCH syntax) that
// have no expiry, sorted; on a cluster, those of every master. Every key the
// project writes must have a TTL, so tests expect an empty result.
func KeysWithoutTTL(ctx context.Context, c redis.UniversalClient, pattern string) ([]string, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	err := forEachMaster(ctx, c, func(ctx context.Context, node redis.Cmdable) error {
		iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			key := iter.Val()
			ttl, err := node.PTTL(ctx, key).Result()
			if err != nil {
				return err
			}
			if ttl == -1 { // go-redis keeps -1 (no expiry) and -2 (no key) as is
				mu.Lock()
				keys = append(keys, key)
				mu.Unlock()
			}
		}
		return iter.Err()
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return keys, nil
}

// forEachMaster calls fn for the one server of a standalone client, or
// concurrently for each master of a cluster client.
func forEachMaster(ctx context.Context, c redis.UniversalClient, fn func(context.Context, redis.Cmdable) error) error {
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return fn(ctx, node)
		})
	}
	return fn(ctx, c)
}
