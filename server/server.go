package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/guarded"
	clusterstatus "github.com/sluicehq/sluice/internal/status"
	"github.com/sluicehq/sluice/limiter"
)

// gateway is the sluice gateway: an Echo application that forwards /v1/* to
// the vendor through the stack of the package documentation. It is an
// http.Handler; Serve runs it on a listener with graceful shutdown.
type gateway struct {
	cfg   Config
	log   *slog.Logger
	echo  *echo.Echo
	rdb   redis.UniversalClient
	adm   admitter
	users *limiter.KeyLimiter // nil: no per-user limit
	keys  [][sha256.Size]byte // digests of the client keys; none: no auth
	// idSecret keys the HMAC of client ids (see clientID).
	idSecret []byte
	load     *loadCaps
	// guard is the guarded vendor call: admission by adm, the call, the
	// retries, the release.
	guard   *guarded.Transport
	metrics *metrics
	ready   readiness
	// status samples the budget's cluster-wide state for /status and the
	// cluster gauges, until stopStatus.
	status     *clusterstatus.Status
	stopStatus context.CancelFunc
	// sleep waits between attempts; tests replace it to observe backoffs.
	sleep func(ctx context.Context, d time.Duration) error
	// work counts requests in progress: shutdown waits for them before
	// closing the guard transport (which waits for the leases held through
	// their cancel grace), the admitter and Redis.
	work guarded.Tracker

	closeOnce sync.Once
	closeErr  error
}

// gatewayOptions are the collaborators of a gateway.
type gatewayOptions struct {
	// Redis is the shared store of the per-user limit and of readiness,
	// and of admission unless admitter is set. Required.
	Redis redis.UniversalClient
	// admitter admits vendor calls. Nil: the cluster semaphore with the
	// budget's token bucket, on Redis (package semaphore).
	admitter admitter
	// Logger receives the JSON access log and warnings. Nil: slog.Default().
	Logger *slog.Logger
}

// newGateway returns a gateway for cfg (as LoadConfig returns it). Close it to
// release its leases.
func newGateway(cfg Config, opt gatewayOptions) (*gateway, error) {
	if opt.Redis == nil {
		return nil, errors.New("server: gatewayOptions.Redis is required")
	}
	if cfg.UpstreamURL == nil {
		return nil, errors.New("server: Config.UpstreamURL is required")
	}
	s := &gateway{
		cfg:     cfg,
		log:     opt.Logger,
		rdb:     opt.Redis,
		adm:     opt.admitter,
		metrics: newMetrics(),
		load:    newLoad(cfg),
	}
	s.ready.ttl = readyFor
	s.idSecret = idSecret(cfg)
	if s.log == nil {
		s.log = slog.Default()
	}
	s.guard = guarded.New(guardConfig(cfg), gatewayAdmitter{s}, s.metrics.guard, s.log)
	s.sleep = s.guard.Sleep
	s.guard.Sleep = func(ctx context.Context, d time.Duration) error { return s.sleep(ctx, d) }
	if s.adm == nil {
		adm, err := newSemaphoreAdmitter(opt.Redis, cfg)
		if err != nil {
			return nil, err
		}
		s.adm = adm
	}
	if !cfg.UserRate.IsZero() {
		users, err := limiter.NewKeyLimiter(opt.Redis, cfg.Budget, cfg.UserRate)
		if err != nil {
			return nil, err
		}
		s.users = users
	}
	for _, k := range cfg.APIKeys {
		s.keys = append(s.keys, sha256.Sum256([]byte(k)))
	}
	st, err := clusterstatus.New(opt.Redis, []clusterstatus.Budget{{Name: cfg.Budget, Rate: cfg.Rate, Concurrency: cfg.Concurrency}}, clusterstatus.Options{})
	if err != nil {
		return nil, errors.Join(err, s.adm.Close())
	}
	s.status = st
	s.metrics.reg.MustRegister(st.Collector())
	sctx, stop := context.WithCancel(context.Background())
	s.stopStatus = stop
	go func() { _ = st.Run(sctx) }()
	s.echo = s.routes()
	return s, nil
}

// routes builds the Echo application, its middleware in the order of the
// stack.
func (s *gateway) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.IPExtractor = func(r *http.Request) string { return s.clientAddr(r).String() }
	// observe answers every error below it; this only keeps Echo's own
	// error format out, should an error ever come from above it.
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		ae, _ := asAPIError(err)
		writeError(c, ae)
	}
	e.Use(requestID, s.observe, s.recoverPanic)
	e.GET("/healthz", s.healthz) // load balancers probe it; it touches nothing
	if s.cfg.OpsListen == "" {
		s.opsRoutes(e)
	}
	e.Match(proxiedMethods, "/v1/*", s.proxy, s.limitBody, s.authenticate, s.limitLoad, s.limitUser, s.deadline)
	return e
}

// opsRoutes adds the routes of operators: readiness, metrics, and the
// cluster's status page and its data (any replica shows the whole cluster).
func (s *gateway) opsRoutes(e *echo.Echo) {
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(s.metrics.handler()))
	page := echo.WrapHandler(s.status.Handler())
	e.GET("/status", page)
	e.GET("/status.json", page)
}

// opsHandler serves the routes of operators alone, for SLUICE_OPS_LISTEN.
func (s *gateway) opsHandler() http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		ae, _ := asAPIError(err)
		writeError(c, ae)
	}
	e.Use(requestID, s.observe, s.recoverPanic)
	e.GET("/healthz", s.healthz)
	s.opsRoutes(e)
	return e
}

// proxiedMethods are the methods of the vendor's API; TRACE and CONNECT get
// 405 (and OPTIONS Echo's 204 with Allow).
var proxiedMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// ServeHTTP serves one request.
func (s *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.work.Add()
	defer s.work.Done()
	s.echo.ServeHTTP(w, r)
}

func (s *gateway) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is red while the store is unreachable or its scripts fail, and
// turns green again by itself when it recovers. The answer is cached for
// readyFor: probes, however many, cost the shared store a few commands a
// second at most.
func (s *gateway) readyz(c echo.Context) error {
	if err := s.ready.check(func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 2*time.Second)
		defer cancel()
		err := s.rdb.Ping(ctx).Err()
		if err == nil {
			err = s.adm.Check(ctx)
		}
		if err != nil {
			s.metrics.redisErrors.WithLabelValues("ready").Inc()
			s.log.Warn("not ready", "error", err)
		}
		return err
	}); err != nil {
		return errNotReady
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// readyFor is how long a readiness answer is reused.
const readyFor = time.Second

// readiness caches the last readiness check; one check runs at a time and
// the probes that arrive meanwhile share its answer.
type readiness struct {
	ttl  time.Duration // readyFor; tests set 0
	mu   sync.Mutex
	at   time.Time
	last error
}

func (r *readiness) check(probe func() error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < r.ttl {
		return r.last
	}
	r.last = probe()
	r.at = time.Now()
	return r.last
}

// errShutdownCut is the cause of the context of a request that the
// shutdown cut at its deadline.
var errShutdownCut = errors.New("server: shutdown deadline")

// cutWait bounds how long, after the shutdown deadline, the requests that
// were cut may take to answer and release their leases (cancel grace
// included) before their connections are closed and the admitter releases
// whatever is left.
const cutWait = 2 * time.Second

// Serve answers requests on ln until ctx ends, then shuts down gracefully:
// it stops accepting and lets requests in flight finish for up to
// ShutdownTimeout. Past it, it cuts those still running: their contexts end
// (cause errShutdownCut), so each answers 503 shutting_down (a stream
// already under way just ends) and releases its lease; it waits up to
// cutWait for them, then closes what is left. Only when no request runs
// and no lease release is under way does it close the gateway (the admitter
// releases anything still held), so the caller may then close Redis. It
// returns nil after a clean shutdown.
func (s *gateway) Serve(ctx context.Context, ln net.Listener) error {
	base, cut := context.WithCancelCause(context.Background())
	defer cut(nil)
	lim := newConnLimit(ln, s.cfg.MaxConns, s.metrics)
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       s.cfg.RequestTimeout, // a body must arrive within the SLA
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         lim.connState,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(lim) }()
	select {
	case err := <-served:
		return errors.Join(err, s.Close())
	case <-ctx.Done():
	}
	s.log.Info("shutting down: draining requests in flight", "timeout", s.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && sctx.Err() != nil {
		s.log.Warn("shutdown deadline passed: cutting the requests still in flight", "requests", s.work.Count())
		cut(errShutdownCut)
		// Shutdown again: it returns once every connection is idle, that
		// is once the cut requests' answers are written.
		cctx, cancel := context.WithTimeout(context.Background(), cutWait)
		defer cancel()
		if err := hs.Shutdown(cctx); err != nil && cctx.Err() != nil {
			s.log.Warn("requests still running after the cut: closing their connections", "requests", s.work.Count())
			_ = hs.Close()
		}
	}
	<-served
	return s.Close()
}

// Close waits (boundedly) for the requests still running and for lease
// releases under way, releases every lease the gateway still holds and
// stops the admitter's background work. It does not close the Redis client,
// which the caller owns.
func (s *gateway) Close() error {
	s.closeOnce.Do(func() {
		if !s.work.Wait(cutWait + s.cfg.CancelGrace) {
			s.log.Warn("closing with requests or lease releases still running; the admitter releases their leases", "count", s.work.Count())
		}
		s.stopStatus()
		s.closeErr = s.guard.Close()
	})
	return s.closeErr
}

// bindAddr is the address to listen on: SLUICE_LISTEN, but on loopback only
// when there are no client keys and SLUICE_ALLOW_NO_AUTH is not set, for an
// open relay on the network would spend the vendor key for anyone.
func bindAddr(cfg Config) string {
	if len(cfg.APIKeys) > 0 || cfg.AllowNoAuth || isLoopback(cfg.Listen) {
		return cfg.Listen
	}
	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return cfg.Listen // net.Listen says what is wrong with it
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// Run is sluice serve: it listens (see Listen), opens Redis (or the
// embedded one), builds the gateway and serves until ctx ends (SIGTERM),
// then shuts down gracefully and releases every lease.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	ln, err := Listen(cfg, log)
	if err != nil {
		return err
	}
	return Serve(ctx, cfg, log, ln)
}

// Listen opens the gateway's listener on SLUICE_LISTEN, on loopback only
// when there are no client keys and SLUICE_ALLOW_NO_AUTH is not set (with a
// warning saying so).
func Listen(cfg Config, log *slog.Logger) (net.Listener, error) {
	listen := bindAddr(cfg)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	switch {
	case listen != cfg.Listen:
		log.Warn("SLUICE_API_KEYS is unset: listening on loopback only; set SLUICE_API_KEYS, or SLUICE_ALLOW_NO_AUTH=true to serve the network without auth",
			"listen", listen)
	case len(cfg.APIKeys) == 0:
		log.Warn("SLUICE_API_KEYS is unset: clients are not authenticated; the per-client limits are per client IP")
	}
	return ln, nil
}

// Serve is Run on a listener the caller opened with Listen (a caller that
// must know its address before serving, as sluice demo does). It closes ln.
func Serve(ctx context.Context, cfg Config, log *slog.Logger, ln net.Listener) error {
	redis.SetLogger(redisLogger{log})
	rdb, closeRedis, err := OpenRedis(cfg, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	defer closeRedis()
	s, err := newGateway(cfg, gatewayOptions{Redis: rdb, Logger: log})
	if err != nil {
		_ = ln.Close()
		return err
	}
	if cfg.OpsListen != "" {
		ops, err := net.Listen("tcp", cfg.OpsListen)
		if err != nil {
			_ = ln.Close()
			return errors.Join(err, s.Close())
		}
		hs := &http.Server{Handler: s.opsHandler(), ReadHeaderTimeout: readHeaderTimeout, MaxHeaderBytes: maxHeaderBytes,
			IdleTimeout: cfg.IdleTimeout, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go func() { _ = hs.Serve(ops) }()
		defer hs.Close()
		log.Info("operations listener (/healthz, /readyz, /metrics, /status)", "addr", ops.Addr().String())
	}
	log.Info("sluice serve listening",
		"addr", ln.Addr().String(), "upstream", cfg.UpstreamURL.Redacted(), "budget", cfg.Budget,
		"rate", cfg.Rate.String(), "concurrency", cfg.Concurrency, "user_rate", cfg.UserRate.String(),
		"queue_timeout", cfg.QueueTimeout.String(), "call_timeout", cfg.CallTimeout.String(),
		"request_timeout", cfg.RequestTimeout.String(), "max_attempts", cfg.MaxAttempts)
	return s.Serve(ctx, ln)
}
