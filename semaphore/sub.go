package semaphore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A subscription that has been silent for subIdle is pinged; if the pong
// does not come within subPongWait, the connection is taken for dead (a
// half-open TCP connection, e.g. dropped by a NAT or a load balancer without
// FIN or RST, loses every message silently) and replaced.
const (
	subIdle     = time.Second
	subPongWait = time.Second
)

// subscription is a replica's subscription to its wake channel.
type subscription struct {
	rdb     redis.UniversalClient
	channel string
	sharded bool

	mu     sync.Mutex
	ps     *redis.PubSub
	closed bool
	down   atomic.Pointer[error] // why it is down; nil while it works
}

func (u *subscription) init(ctx context.Context, rdb redis.UniversalClient, channel string, sharded bool) {
	u.rdb, u.channel, u.sharded = rdb, channel, sharded
	u.ps = u.open(ctx)
}

func (u *subscription) open(ctx context.Context) *redis.PubSub {
	if u.sharded {
		return u.rdb.SSubscribe(ctx, u.channel)
	}
	return u.rdb.Subscribe(ctx, u.channel)
}

// current returns the live PubSub, nil once closed.
func (u *subscription) current() *redis.PubSub {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	return u.ps
}

// replace drops the current connection for a new subscription.
func (u *subscription) replace(ctx context.Context, why error) {
	u.setDown(why)
	ps := u.open(ctx)
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		_ = ps.Close()
		return
	}
	old := u.ps
	u.ps = ps
	u.mu.Unlock()
	_ = old.Close()
}

func (u *subscription) setDown(why error) {
	err := fmt.Errorf("%w: wake-up subscription: %w", ErrUnavailable, why)
	u.down.Store(&err)
}

// err is nil while the subscription works.
func (u *subscription) err() error {
	if p := u.down.Load(); p != nil {
		return *p
	}
	return nil
}

func (u *subscription) close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	return u.ps.Close()
}

var errNoPong = errors.New("no answer to a ping: connection silently dead")

// listen routes wake-ups from the replica's channel to its waiters, and
// watches the subscription: when silent, it pings it; when a ping goes
// unanswered, it replaces the connection. After every (re)subscription it
// wakes every local waiter, since messages sent meanwhile are lost.
func (s *Semaphore) listen(ctx context.Context) {
	defer s.bg.Done()
	backoff := 50 * time.Millisecond
	pinged := false
	for {
		ps := s.sub.current()
		if ps == nil {
			return
		}
		wait := subIdle
		if pinged {
			wait = subPongWait
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				if !pinged {
					pctx, cancel := context.WithTimeout(ctx, subPongWait)
					_ = ps.Ping(pctx)
					cancel()
					pinged = true
				} else {
					s.sub.replace(ctx, errNoPong)
					pinged = false
				}
				continue
			}
			// A broken connection: go-redis reconnects and
			// resubscribes on the next receive.
			s.sub.setDown(err)
			pinged = false
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		pinged = false
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Message:
			s.deliver(m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
				s.sub.down.Store(nil)
				s.wakeAll()
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
