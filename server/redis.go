package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Redis timeouts: short, so that a Redis outage fails requests fast (503)
// instead of holding them. Admission waits are not Redis calls: the
// semaphore waits for wake-ups between short script calls.
const (
	redisDialTimeout = 2 * time.Second
	redisIOTimeout   = time.Second
	redisPoolTimeout = 2 * time.Second
)

// OpenRedis connects to the store of cfg: SLUICE_REDIS_URL read as
// SLUICE_REDIS_MODE says, or, when the URL is unset, an embedded in-process
// Redis (miniredis, which runs the same Lua scripts) for a single replica,
// with a warning. Call the returned function when done: it closes the
// client, and the embedded server if any.
//
// Commands are never retried by the client (MaxRetries -1, unless the URL
// says otherwise): a script whose reply was lost may have run, and running
// it again would take a second token or slot. The gateway's own retries are
// the only retry layer.
func OpenRedis(cfg Config, log *slog.Logger) (redis.UniversalClient, func() error, error) {
	if cfg.RedisURL == "" {
		return openEmbedded(log)
	}
	// The URL may hold a password: errors below never quote it.
	switch cfg.RedisMode {
	case "cluster":
		o, err := redis.ParseClusterURL(cfg.RedisURL)
		if err != nil {
			return nil, nil, errors.New("invalid SLUICE_REDIS_URL: not a Redis cluster URL")
		}
		failFast{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}.apply()
		c := redis.NewClusterClient(o)
		return c, c.Close, nil
	case "sentinel":
		o, err := redis.ParseFailoverURL(cfg.RedisURL)
		if err != nil || o.MasterName == "" {
			return nil, nil, errors.New("invalid SLUICE_REDIS_URL: not a Redis sentinel URL with ?master_name=NAME")
		}
		failFast{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}.apply()
		c := redis.NewFailoverClient(o)
		return c, c.Close, nil
	}
	o, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, nil, errors.New("invalid SLUICE_REDIS_URL: want redis://[user:password@]host:port[/db], or rediss:// for TLS")
	}
	failFast{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}.apply()
	c := redis.NewClient(o)
	return c, c.Close, nil
}

// failFast points at the client options that decide how fast a Redis outage
// fails a request; apply sets short timeouts, one dial attempt and no command
// retries where the URL did not set them, and makes context deadlines apply
// to socket I/O.
type failFast struct {
	dial, read, write, pool *time.Duration
	retries, dialAttempts   *int
	contextTimeouts         *bool
}

func (f failFast) apply() {
	for _, d := range []struct {
		field *time.Duration
		value time.Duration
	}{{f.dial, redisDialTimeout}, {f.read, redisIOTimeout}, {f.write, redisIOTimeout}, {f.pool, redisPoolTimeout}} {
		if *d.field == 0 {
			*d.field = d.value
		}
	}
	if *f.retries == 0 {
		*f.retries = -1
	}
	if *f.dialAttempts == 0 {
		*f.dialAttempts = 1
	}
	*f.contextTimeouts = true
}

// redisLogger sends go-redis's own messages (dial failures...) to the JSON
// log instead of its default stderr logger.
type redisLogger struct{ log *slog.Logger }

// Printf logs a go-redis message as a warning.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

// openEmbedded starts miniredis on a loopback port. ClockTTL makes its keys
// expire as time passes (by default miniredis only expires on FastForward),
// so the scripts' TTLs work as on a real Redis.
func openEmbedded(log *slog.Logger) (redis.UniversalClient, func() error, error) {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.Start(); err != nil {
		return nil, nil, fmt.Errorf("server: embedded Redis: %w", err)
	}
	log.Warn("SLUICE_REDIS_URL is unset: using an embedded in-process Redis. " +
		"Replicas will NOT share the vendor budget: run ONE replica, or set SLUICE_REDIS_URL for several.")
	o := &redis.Options{Addr: m.Addr()}
	failFast{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled}.apply()
	c := redis.NewClient(o)
	return c, func() error {
		err := c.Close()
		m.Close()
		return err
	}, nil
}
