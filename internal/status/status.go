// Package status shows an operator the cluster-wide state of sluice's
// budgets: a live page (/status), its data as JSON (/status.json) and
// Prometheus gauges, all from one sampler.
//
// The sampler reads every budget's state from Redis in one pipelined round
// trip per interval (one second by default): the leases held against the
// concurrency C, the depth of the queue, the replicas alive (heartbeats and
// lease holders, against Redis's own clock), the tokens in the bucket now
// and the time until the next one (the scripts' GCRA arithmetic on the
// bucket's TAT), and the budget's grant counter, whose deltas give the
// request rate actually granted. It keeps the last samples in a ring of
// fixed size. Page views, JSON polls and scrapes only read that ring, so
// the load on Redis does not grow with them, and any replica shows the
// whole cluster.
//
// A Redis failure never breaks the page: it shows the error, how long ago
// the last good sample was taken, and that sample.
//
//	st, err := status.New(rdb, []status.Budget{{Name: "default", Rate: limit, Concurrency: 4}}, status.Options{})
//	go st.Run(ctx)
//	mux.Handle("/status", st.Handler())
//	mux.Handle("/status.json", st.Handler())
//	registry.MustRegister(st.Collector())
//
// A Status is safe for concurrent use.
package status

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/limiter"
)

// ErrConfig is returned by New for budgets or options it cannot use.
var ErrConfig = errors.New("status: invalid configuration")

// Budget is the configuration of one budget, as the gateway applies it.
type Budget struct {
	// Name is the budget's name (its Redis namespace).
	Name string
	// Rate is the budget's request rate and burst; zero means no rate.
	Rate limiter.Limit
	// Concurrency is the number of slots, cluster-wide (C).
	Concurrency int
}

// Options configure a Status. The zero value of each field means its
// documented default.
type Options struct {
	// Interval is the time between two samples. Default (and the gateway's
	// setting) 1s; at least 50ms.
	Interval time.Duration
	// History is the number of samples kept. Default 60.
	History int
	// Timeout bounds one sample's round trip to Redis. Default Interval.
	// A go-redis client cuts its reads at a context's deadline only with
	// ContextTimeoutEnabled; otherwise a silent Redis holds a sample for
	// the client's ReadTimeout (3s by default). The page answers meanwhile.
	Timeout time.Duration
}

// MinInterval is the shortest Options.Interval New accepts.
const MinInterval = 50 * time.Millisecond

// Status samples the state of budgets in Redis and serves it.
type Status struct {
	rdb     redis.UniversalClient
	budgets []budget
	opt     Options
	start   time.Time

	mu      sync.Mutex
	ring    []sample // the last opt.History good samples, oldest first
	tookAt  time.Time
	lastErr error
	errAt   time.Time
	errors  uint64
}

// budget is a Budget with its keys and the GCRA interval of its rate.
type budget struct {
	Budget
	keys     redisstate.Keys
	interval int64 // microseconds per token; 0 without a rate
	counted  bool  // the grant counter has been seen (guarded by Status.mu)
}

// sample is one reading of every budget at one Redis time.
type sample struct {
	now    int64     // Redis time, microseconds
	took   time.Time // the replica's clock when the reply came
	points []point   // one per budget, in order
}

// point is one budget's state in a sample.
type point struct {
	leases   int
	queue    int64
	replicas []string // alive: heartbeats and lease holders, sorted
	tokens   int      // available now; -1 without a rate
	next     int64    // microseconds until the next token
	grants   int64    // the grant counter; -1 when the key is missing
}

// New returns a Status for budgets, read through rdb. Call Run to sample.
func New(rdb redis.UniversalClient, budgets []Budget, opt Options) (*Status, error) {
	if opt.Interval == 0 {
		opt.Interval = time.Second
	}
	if opt.History == 0 {
		opt.History = 60
	}
	if opt.Timeout == 0 {
		opt.Timeout = opt.Interval
	}
	switch {
	case rdb == nil:
		return nil, fmt.Errorf("%w: no Redis client", ErrConfig)
	case len(budgets) == 0:
		return nil, fmt.Errorf("%w: no budget", ErrConfig)
	case opt.Interval < MinInterval:
		return nil, fmt.Errorf("%w: interval %s is shorter than %s", ErrConfig, opt.Interval, MinInterval)
	case opt.History < 2:
		return nil, fmt.Errorf("%w: history of %d samples: at least 2", ErrConfig, opt.History)
	case opt.Timeout < 0:
		return nil, fmt.Errorf("%w: negative timeout %s", ErrConfig, opt.Timeout)
	}
	s := &Status{rdb: rdb, opt: opt, start: time.Now()}
	seen := map[string]bool{}
	for _, b := range budgets {
		if b.Name == "" {
			b.Name = "default"
		}
		if seen[b.Name] {
			return nil, fmt.Errorf("%w: budget %q listed twice", ErrConfig, b.Name)
		}
		seen[b.Name] = true
		if b.Concurrency <= 0 {
			return nil, fmt.Errorf("%w: budget %q: concurrency must be positive, got %d", ErrConfig, b.Name, b.Concurrency)
		}
		bb := budget{Budget: b, keys: redisstate.For(b.Name)}
		if !b.Rate.IsZero() {
			if err := b.Rate.Validate(); err != nil {
				return nil, fmt.Errorf("%w: budget %q: %w", ErrConfig, b.Name, err)
			}
			bb.interval = redisstate.IntervalMicros(b.Rate.Rate, b.Rate.Period)
		}
		s.budgets = append(s.budgets, bb)
	}
	return s, nil
}

// Run samples at once and then every Options.Interval until ctx is done,
// and returns ctx's error. Samples start at least Interval apart, however
// long one takes. Run it once, in its own goroutine.
func (s *Status) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		began := time.Now()
		_ = s.Sample(ctx) // kept for the page and counted
		t.Reset(s.opt.Interval - time.Since(began))
	}
}

// Sample takes one sample now and reports Redis's error, if any (also kept
// for the page and counted in sluice_status_sample_errors_total, unless
// parent was done). Run calls
// it every interval; it is exported for tests and tools.
func (s *Status) Sample(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, s.opt.Timeout)
	defer cancel()
	smp, err := s.read(ctx)
	if err != nil && parent.Err() != nil {
		return err // stopping: not Redis's fault
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer from Redis within %s: %w", s.opt.Timeout, err)
		}
		s.lastErr, s.errAt = err, time.Now()
		s.errors++
		return err
	}
	for i, p := range smp.points {
		if p.grants >= 0 {
			s.budgets[i].counted = true
		}
	}
	if len(s.ring) == s.opt.History {
		copy(s.ring, s.ring[1:])
		s.ring = s.ring[:len(s.ring)-1]
	}
	s.ring = append(s.ring, smp)
	s.tookAt, s.lastErr = smp.took, nil
	return nil
}

// budgetCmds are the replies of one budget's reads in the pipeline.
type budgetCmds struct {
	bucket, clock, grants *redis.StringCmd
	leases, replicas      *redis.ZSliceCmd
	queue                 *redis.IntCmd
}

// read takes a sample in one pipelined round trip. Nothing is written: a
// status page must not change what it shows (expired leases and heartbeats
// are skipped by their score, as the scripts do).
func (s *Status) read(ctx context.Context) (sample, error) {
	cmds := make([]budgetCmds, len(s.budgets))
	var tm *redis.TimeCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		tm = p.Time(ctx)
		for i, b := range s.budgets {
			c := &cmds[i]
			c.clock = p.Get(ctx, b.keys.Clock)
			c.bucket = p.Get(ctx, b.keys.Bucket)
			c.grants = p.Get(ctx, b.keys.Grants)
			// At most C live leases, plus expired ones the scripts have
			// not dropped yet: small.
			c.leases = p.ZRangeWithScores(ctx, b.keys.Leases, 0, -1)
			c.queue = p.ZCard(ctx, b.keys.Queue)
			c.replicas = p.ZRangeWithScores(ctx, b.keys.Replicas, 0, -1)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return sample{}, err
	}
	t, err := tm.Result()
	if err != nil {
		return sample{}, err
	}
	smp := sample{now: t.UnixMicro(), took: time.Now(), points: make([]point, len(s.budgets))}
	for i, b := range s.budgets {
		p, err := b.point(smp.now, &cmds[i])
		if err != nil {
			return sample{}, fmt.Errorf("budget %q: %w", b.Name, err)
		}
		smp.points[i] = p
	}
	return smp, nil
}

// point derives one budget's figures from its replies, at Redis time now.
func (b *budget) point(now int64, c *budgetCmds) (point, error) {
	clock, err := optInt(c.clock)
	if err != nil {
		return point{}, err
	}
	if clock > now {
		now = clock // the scripts never decide before the budget's clock
	}
	p := point{tokens: -1, grants: -1}
	alive := map[string]bool{}
	leases, err := c.leases.Result()
	if err != nil {
		return point{}, err
	}
	for _, z := range leases {
		if int64(z.Score) > now {
			p.leases++
			alive[owner(z.Member)] = true
		}
	}
	if p.queue, err = c.queue.Result(); err != nil {
		return point{}, err
	}
	beats, err := c.replicas.Result()
	if err != nil {
		return point{}, err
	}
	for _, z := range beats {
		if int64(z.Score) > now {
			alive[owner(z.Member)] = true
		}
	}
	for r := range alive {
		p.replicas = append(p.replicas, r)
	}
	slices.Sort(p.replicas)
	if c.grants.Err() == nil {
		if p.grants, err = optInt(c.grants); err != nil {
			return point{}, err
		}
	} else if !errors.Is(c.grants.Err(), redis.Nil) {
		return point{}, c.grants.Err()
	}
	if b.interval > 0 {
		tat, err := optInt(c.bucket)
		if err != nil {
			return point{}, err
		}
		p.tokens, p.next = gcra(now, tat, b.interval, int64(b.Rate.Burst))
	}
	return p, nil
}

// gcra returns the tokens a bucket of interval and burst whose theoretical
// arrival time is tat holds at now, and the microseconds until the next one
// (0 when one is there): the arithmetic of gcra in common.lua, for n = 1.
func gcra(now, tat, interval, burst int64) (int, int64) {
	if tat < now {
		tat = now
	}
	tokens := (now + burst*interval - tat) / interval
	tokens = max(0, min(tokens, burst))
	var next int64
	if tokens == 0 {
		next = max(0, tat+interval-burst*interval-now)
	}
	return int(tokens), next
}

// optInt parses an integer reply; a missing key is 0.
func optInt(c *redis.StringCmd) (int64, error) {
	v, err := c.Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("key %s holds %q, not an integer", c.Args()[1], v)
	}
	return n, nil
}

// owner is the replica of a lease or waiter id (a sorted set member): the
// part before the dot.
func owner(member any) string {
	id, _ := member.(string)
	r, _, _ := strings.Cut(id, ".")
	return r
}
