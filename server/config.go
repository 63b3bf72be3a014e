package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluicehq/sluice/internal/guarded"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// Config is the configuration of the gateway. LoadConfig fills it from the
// SLUICE_* environment variables listed by Variables; every field has the
// default documented there.
type Config struct {
	// Listen is the address the gateway listens on (SLUICE_LISTEN).
	// Without APIKeys and AllowNoAuth, Run listens on its port on loopback
	// only.
	Listen string
	// OpsListen, when set, is a separate address for /metrics and /readyz
	// (and /healthz); they are then not served on Listen
	// (SLUICE_OPS_LISTEN).
	OpsListen string
	// RedisURL is a redis:// or rediss:// URL (SLUICE_REDIS_URL). Empty
	// means an embedded in-process Redis that replicas cannot share.
	RedisURL string
	// RedisMode is how RedisURL is read: "standalone", "cluster" or
	// "sentinel" (SLUICE_REDIS_MODE).
	RedisMode string
	// UpstreamURL is the vendor base URL; the client's /v1/... path is
	// appended to it (SLUICE_UPSTREAM_URL).
	UpstreamURL *url.URL
	// UpstreamAPIKey is sent to the vendor as a bearer token
	// (SLUICE_UPSTREAM_API_KEY).
	UpstreamAPIKey Secret
	// Budget names the shared vendor budget, the Redis namespace every
	// replica with the same name shares (SLUICE_BUDGET).
	Budget string
	// Rate is the vendor rate and burst (SLUICE_RATE, SLUICE_BURST).
	Rate limiter.Limit
	// Concurrency is the most vendor calls in flight, cluster-wide
	// (SLUICE_CONCURRENCY).
	Concurrency int
	// QueueTimeout is the longest a request may wait to START a vendor
	// call (SLUICE_QUEUE_TIMEOUT).
	QueueTimeout time.Duration
	// CallTimeout bounds one vendor attempt, from sending to the last byte
	// of the response, streams included (SLUICE_CALL_TIMEOUT).
	CallTimeout time.Duration
	// RequestTimeout is the SLA of a whole request, retries and streaming
	// included (SLUICE_REQUEST_TIMEOUT).
	RequestTimeout time.Duration
	// MaxAttempts is the most vendor attempts per request
	// (SLUICE_MAX_ATTEMPTS).
	MaxAttempts int
	// LeaseTTL is the semaphore lease TTL (SLUICE_LEASE_TTL).
	LeaseTTL time.Duration
	// CancelGrace is how long the lease of a vendor call that we cancelled
	// while it was at the vendor (client gone, a deadline, shutdown) is
	// still held before it is released, in the background after the
	// client's answer (SLUICE_CANCEL_GRACE; zero: released at once). The
	// vendor learns of a cancelled call one network hop after we do;
	// releasing the slot before then lets it count C+1. Calls the vendor
	// answered, or that never reached it, release at once.
	CancelGrace time.Duration
	// UserRate is the per-user REJECT limit; the zero Limit means off
	// (SLUICE_USER_RATE, SLUICE_USER_BURST).
	UserRate limiter.Limit
	// APIKeys are the accepted client keys; none means no client auth
	// (SLUICE_API_KEYS).
	APIKeys []Secret
	// AllowNoAuth lets a gateway without APIKeys listen beyond loopback
	// (SLUICE_ALLOW_NO_AUTH): an open relay spends the vendor key.
	AllowNoAuth bool
	// ClientIDSecret keys the HMAC that turns a client key into the id
	// logged and used in Redis key names (SLUICE_CLIENT_ID_SECRET). Empty:
	// derived from the vendor key, else from the client keys, so every
	// replica of a deployment computes the same ids.
	ClientIDSecret Secret
	// MaxBody is the largest request body in bytes (SLUICE_MAX_BODY).
	MaxBody int64
	// BackoffBase and BackoffMax shape the full-jitter exponential backoff
	// between attempts (SLUICE_BACKOFF_BASE, SLUICE_BACKOFF_MAX).
	BackoffBase, BackoffMax time.Duration
	// ConnectTimeout bounds dialling the vendor and its TLS handshake
	// (SLUICE_CONNECT_TIMEOUT).
	ConnectTimeout time.Duration
	// ForwardHeaders are request headers forwarded to the vendor beyond the
	// built-in allowlist, canonical (SLUICE_FORWARD_HEADERS).
	ForwardHeaders []string
	// TrustedProxies are the networks whose X-Forwarded-For is believed:
	// the client is the rightmost address not in them
	// (SLUICE_TRUSTED_PROXIES; SLUICE_TRUST_PROXY=true adds the loopback
	// and private networks). None: the direct peer.
	TrustedProxies []netip.Prefix
	// MaxConns caps the connections open on the listener; past it the
	// oldest connection without a request in progress is closed, else the
	// new one is answered 503 (SLUICE_MAX_CONNS).
	MaxConns int
	// IdleTimeout closes a keep-alive connection idle this long
	// (SLUICE_IDLE_TIMEOUT).
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to the client, refreshed per chunk of
	// a stream; never past the call deadline while a vendor slot is held
	// (SLUICE_WRITE_TIMEOUT).
	WriteTimeout time.Duration
	// MaxRequests and MaxBuffered cap the requests in progress on this
	// replica and the request body bytes it holds; past them: 503
	// (SLUICE_MAX_REQUESTS, SLUICE_MAX_BUFFERED).
	MaxRequests int
	MaxBuffered int64
	// ClientMaxRequests and ClientMaxBuffered are the same caps per client
	// (client key, else client IP); past them: 429
	// (SLUICE_CLIENT_MAX_REQUESTS, SLUICE_CLIENT_MAX_BUFFERED).
	ClientMaxRequests int
	ClientMaxBuffered int64
	// ShutdownTimeout is how long in-flight requests may take to finish on
	// SIGTERM (SLUICE_SHUTDOWN_TIMEOUT). Past it they are cut: answered 503
	// shutting_down (a stream already started just ends), their leases
	// released, within a few seconds more.
	ShutdownTimeout time.Duration
	// LogLevel is the level of the JSON log (SLUICE_LOG_LEVEL).
	LogLevel slog.Level
}

// Secret is a string that must never reach a log or a response: it formats
// as "REDACTED" with fmt and log/slog.
type Secret string

// String returns "REDACTED".
func (Secret) String() string { return "REDACTED" }

// GoString returns "REDACTED", so %#v does not print the secret either.
func (Secret) GoString() string { return "REDACTED" }

// MarshalText returns "REDACTED", for encoding/json and log/slog's JSON.
func (Secret) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// LogValue returns "REDACTED" for log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Variable is one configuration variable of sluice serve.
type Variable struct {
	// Name is the environment variable, e.g. SLUICE_RATE.
	Name string
	// Default is the value used when the variable is unset or empty.
	Default string
	// Usage says what the variable means, in one line.
	Usage string

	set func(c *Config, v string) error
}

// Flag returns the command-line flag that mirrors the variable:
// SLUICE_QUEUE_TIMEOUT is --queue-timeout.
func (v Variable) Flag() string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(v.Name, "SLUICE_"), "_", "-"))
}

// variables is the configuration contract, in the order of --help. A
// variable may rely on those before it (SLUICE_BURST sets the burst of the
// rate parsed from SLUICE_RATE).
var variables = []Variable{
	{"SLUICE_LISTEN", ":8080", "listen address", func(c *Config, v string) error {
		c.Listen = v
		return nil
	}},
	{"SLUICE_OPS_LISTEN", "", "separate address for /metrics and /readyz (then not on SLUICE_LISTEN; /healthz is on both); unset: the same listener", func(c *Config, v string) error {
		c.OpsListen = v
		return nil
	}},
	{"SLUICE_REDIS_URL", "", "redis:// or rediss:// URL; unset: an embedded in-process Redis, one replica only", func(c *Config, v string) error {
		c.RedisURL = v
		return nil
	}},
	{"SLUICE_REDIS_MODE", "standalone", "standalone, cluster (more nodes as ?addr=host:port) or sentinel (?master_name=NAME)", func(c *Config, v string) error {
		switch v {
		case "standalone", "cluster", "sentinel":
			c.RedisMode = v
			return nil
		}
		return errors.New("want standalone, cluster or sentinel")
	}},
	{"SLUICE_UPSTREAM_URL", "", "vendor base URL, e.g. https://api.openai.com; /v1/... is appended (required)", setUpstream},
	{"SLUICE_UPSTREAM_API_KEY", "", "vendor key, sent as a bearer token; never logged or returned", func(c *Config, v string) error {
		c.UpstreamAPIKey = Secret(v)
		return nil
	}},
	{"SLUICE_BUDGET", "default", "name of the shared vendor budget (Redis namespace)", func(c *Config, v string) error {
		c.Budget = v
		return nil
	}},
	{"SLUICE_RATE", guarded.DefaultRateSpec, "vendor rate, cluster-wide: RATE/PERIOD, e.g. 60/m, 10/s, 5/250ms", func(c *Config, v string) (err error) {
		c.Rate, err = parseRate(v)
		return err
	}},
	{"SLUICE_BURST", strconv.Itoa(guarded.DefaultRate.Burst), "vendor bucket size", func(c *Config, v string) (err error) {
		c.Rate.Burst, err = positiveInt(v)
		return err
	}},
	{"SLUICE_CONCURRENCY", strconv.Itoa(guarded.DefaultConcurrency), "max in-flight vendor calls, cluster-wide", func(c *Config, v string) (err error) {
		c.Concurrency, err = positiveInt(v)
		return err
	}},
	{"SLUICE_QUEUE_TIMEOUT", guarded.DefaultQueueTimeout.String(), "max wait to START a vendor call; past it: 503, never retried", func(c *Config, v string) (err error) {
		c.QueueTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_CALL_TIMEOUT", guarded.DefaultCallTimeout.String(), "max time of one vendor attempt, first to last byte (streams included)", func(c *Config, v string) (err error) {
		c.CallTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_REQUEST_TIMEOUT", "60s", "SLA of a whole request, retries included; past it: 504", func(c *Config, v string) (err error) {
		c.RequestTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_MAX_ATTEMPTS", strconv.Itoa(guarded.DefaultMaxAttempts), "vendor attempts per request (1 = no retries)", func(c *Config, v string) (err error) {
		c.MaxAttempts, err = positiveInt(v)
		return err
	}},
	{"SLUICE_LEASE_TTL", guarded.DefaultLeaseTTL.String(), "semaphore lease TTL, at least 500ms; held leases renew well inside it", func(c *Config, v string) (err error) {
		c.LeaseTTL, err = positiveDuration(v)
		if err == nil && c.LeaseTTL < semaphore.MinLeaseTTL {
			err = fmt.Errorf("must be at least %s: renewals could not keep a shorter lease", semaphore.MinLeaseTTL)
		}
		return err
	}},
	{"SLUICE_CANCEL_GRACE", guarded.DefaultCancelGrace.String(), "hold the slot of a call cancelled at the vendor this long: the vendor learns of a cancelled call one network hop after we do; releasing the slot before then lets it count C+1 (0: off)", func(c *Config, v string) (err error) {
		c.CancelGrace, err = nonNegativeDuration(v)
		return err
	}},
	{"SLUICE_USER_RATE", "off", "per-user limit (per client key, else per client IP), e.g. 20/m; past it: 429", func(c *Config, v string) error {
		if v == "off" {
			c.UserRate = limiter.Limit{}
			return nil
		}
		l, err := parseRate(v)
		l.Burst = l.Rate
		c.UserRate = l
		return err
	}},
	{"SLUICE_USER_BURST", "", "per-user burst; unset: the count of SLUICE_USER_RATE", func(c *Config, v string) (err error) {
		if c.UserRate.IsZero() {
			return errors.New("needs SLUICE_USER_RATE")
		}
		c.UserRate.Burst, err = positiveInt(v)
		return err
	}},
	{"SLUICE_API_KEYS", "", "client keys: comma-separated, or @FILE with one per line; unset: no auth, and loopback only", setAPIKeys},
	{"SLUICE_ALLOW_NO_AUTH", "false", "without SLUICE_API_KEYS, listen beyond loopback anyway (an open relay spends your vendor key)", func(c *Config, v string) (err error) {
		c.AllowNoAuth, err = parseBool(v)
		return err
	}},
	{"SLUICE_CLIENT_ID_SECRET", "", "HMAC key of the client ids in logs and Redis keys; unset: derived from the vendor key, else the client keys", func(c *Config, v string) error {
		c.ClientIDSecret = Secret(v)
		return nil
	}},
	{"SLUICE_MAX_BODY", "4MiB", "largest request body: bytes, or with KiB/MiB; past it: 413", func(c *Config, v string) (err error) {
		c.MaxBody, err = parseSize(v)
		return err
	}},
	{"SLUICE_BACKOFF_BASE", guarded.DefaultBackoffBase.String(), "backoff before the 2nd attempt is random in [0, BASE], doubling per attempt", func(c *Config, v string) (err error) {
		c.BackoffBase, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_BACKOFF_MAX", guarded.DefaultBackoffMax.String(), "cap of the backoff ceiling (a vendor Retry-After may ask for longer)", func(c *Config, v string) (err error) {
		c.BackoffMax, err = positiveDuration(v)
		if err == nil && c.BackoffMax < c.BackoffBase {
			err = errors.New("must not be less than SLUICE_BACKOFF_BASE")
		}
		return err
	}},
	{"SLUICE_CONNECT_TIMEOUT", guarded.DefaultConnectTimeout.String(), "max time to dial the vendor, and for its TLS handshake", func(c *Config, v string) (err error) {
		c.ConnectTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_FORWARD_HEADERS", "", "more client headers the vendor receives, comma-separated (built in: Accept, Content-Type, Idempotency-Key, OpenAI-Beta, User-Agent)", setForwardHeaders},
	{"SLUICE_TRUSTED_PROXIES", "", "CIDRs of proxies whose X-Forwarded-For is believed; the client is the rightmost hop not in them (IPv6 per /64); unset: the direct peer", setTrustedProxies},
	{"SLUICE_TRUST_PROXY", "false", "true: also trust every loopback and private-network proxy (prefer SLUICE_TRUSTED_PROXIES)", func(c *Config, v string) error {
		trust, err := parseBool(v)
		if trust {
			c.TrustedProxies = append(c.TrustedProxies, privateNetworks...)
		}
		return err
	}},
	{"SLUICE_MAX_CONNS", "512", "connections open at once; past it the oldest one without a request in progress is closed, else 503", func(c *Config, v string) (err error) {
		c.MaxConns, err = positiveInt(v)
		return err
	}},
	{"SLUICE_IDLE_TIMEOUT", "30s", "close a keep-alive connection idle this long (request headers: at most 32 KiB, within 10s)", func(c *Config, v string) (err error) {
		c.IdleTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_WRITE_TIMEOUT", "10s", "max time one write to the client may block (per chunk of a stream); a client that reads slower is cut", func(c *Config, v string) (err error) {
		c.WriteTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_MAX_REQUESTS", "512", "requests in progress on this replica, queued ones included; past it: 503", func(c *Config, v string) (err error) {
		c.MaxRequests, err = positiveInt(v)
		return err
	}},
	{"SLUICE_MAX_BUFFERED", "256MiB", "request body bytes this replica holds at once; past it: 503", func(c *Config, v string) (err error) {
		c.MaxBuffered, err = parseSize(v)
		return err
	}},
	{"SLUICE_CLIENT_MAX_REQUESTS", "64", "requests in progress per client (key, else IP) on this replica; past it: 429", func(c *Config, v string) (err error) {
		c.ClientMaxRequests, err = positiveInt(v)
		return err
	}},
	{"SLUICE_CLIENT_MAX_BUFFERED", "32MiB", "request body bytes held per client on this replica; past it: 429", func(c *Config, v string) (err error) {
		c.ClientMaxBuffered, err = parseSize(v)
		return err
	}},
	{"SLUICE_SHUTDOWN_TIMEOUT", "30s", "on SIGTERM, how long in-flight requests may take to finish; then they are cut (503 shutting_down)", func(c *Config, v string) (err error) {
		c.ShutdownTimeout, err = positiveDuration(v)
		return err
	}},
	{"SLUICE_LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
		return c.LogLevel.UnmarshalText([]byte(v))
	}},
}

// Variables returns the configuration variables of sluice serve, in the
// order in which --help lists them.
func Variables() []Variable { return append([]Variable(nil), variables...) }

// LoadConfig reads the configuration through lookup (os.LookupEnv, or a map
// in tests). An unset or empty variable takes its default. The error names
// the offending variable, in one line.
func LoadConfig(lookup func(name string) (string, bool)) (Config, error) {
	var c Config
	for _, v := range variables {
		val, _ := lookup(v.Name)
		val = strings.TrimSpace(val)
		if val == "" {
			val = v.Default
		}
		if val == "" {
			continue
		}
		if err := v.set(&c, val); err != nil {
			if secretBearing[v.Name] { // the value may hold a key or a password
				return Config{}, fmt.Errorf("invalid %s: %v", v.Name, err)
			}
			return Config{}, fmt.Errorf("invalid %s=%q: %v", v.Name, truncate(val, 100), err)
		}
	}
	switch {
	case c.UpstreamURL == nil:
		return Config{}, errors.New("SLUICE_UPSTREAM_URL is required: the vendor base URL, e.g. https://api.openai.com")
	case c.MaxBody >= c.ClientMaxBuffered:
		return Config{}, errors.New("invalid SLUICE_MAX_BODY: not less than SLUICE_CLIENT_MAX_BUFFERED, so such a body could never be accepted")
	case c.ClientMaxBuffered > c.MaxBuffered:
		return Config{}, errors.New("invalid SLUICE_CLIENT_MAX_BUFFERED: more than SLUICE_MAX_BUFFERED")
	}
	return c, nil
}

// secretBearing are the variables whose values an error never quotes.
var secretBearing = map[string]bool{
	"SLUICE_REDIS_URL": true, "SLUICE_UPSTREAM_URL": true, "SLUICE_UPSTREAM_API_KEY": true,
	"SLUICE_API_KEYS": true, "SLUICE_CLIENT_ID_SECRET": true,
}

// privateNetworks are the loopback and private networks that
// SLUICE_TRUST_PROXY=true trusts.
var privateNetworks = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"), netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fc00::/7"),
}

// setForwardHeaders reads comma-separated header names. Credentials and the
// headers that frame the request stay the gateway's own.
func setForwardHeaders(c *Config, v string) error {
	c.ForwardHeaders = nil
	for name := range strings.SplitSeq(v, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("%q is not a header name", truncate(name, 50))
		}
		name = http.CanonicalHeaderKey(name)
		switch name {
		case "Authorization", "Proxy-Authorization", "Cookie", "Host", "Content-Length", "Content-Encoding",
			"Transfer-Encoding", "Connection", "Expect", "Te", "Trailer", "Upgrade", "X-Request-Id":
			return fmt.Errorf("%s is the gateway's own to set", name)
		}
		c.ForwardHeaders = append(c.ForwardHeaders, name)
	}
	return nil
}

// setTrustedProxies reads comma-separated CIDRs; a bare address is a /32
// (or /128).
func setTrustedProxies(c *Config, v string) error {
	for s := range strings.SplitSeq(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", truncate(s, 50))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		c.TrustedProxies = append(c.TrustedProxies, p.Masked())
	}
	return nil
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.New("want true or false")
	}
	return b, nil
}

func setUpstream(c *Config, v string) error {
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return errors.New("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("want an http:// or https:// URL")
	case u.Host == "":
		return errors.New("no host")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return errors.New("want a base URL without credentials, query or fragment")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if strings.HasSuffix(u.Path, "/v1") {
		return errors.New("give the base URL without /v1: the client's /v1/... path is appended")
	}
	c.UpstreamURL = u
	return nil
}

// setAPIKeys reads a comma list, or @FILE with one key per line (blank lines
// and # comments skipped). A value that yields no key is an error, so an empty
// file cannot silently turn auth off.
func setAPIKeys(c *Config, v string) error {
	list, sep, file := v, ",", false
	if name, ok := strings.CutPrefix(v, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("cannot read the key file: %v", errors.Unwrap(err))
		}
		list, sep, file = string(b), "\n", true
	}
	c.APIKeys = nil
	for k := range strings.SplitSeq(list, sep) {
		k = strings.TrimSpace(k)
		if k != "" && !(file && strings.HasPrefix(k, "#")) {
			c.APIKeys = append(c.APIKeys, Secret(k))
		}
	}
	if len(c.APIKeys) == 0 {
		return errors.New("no key in it; leave it unset to turn auth off")
	}
	return nil
}

// parseRate is limiter.ParseLimit with an error that does not repeat what
// the configuration error already says (the variable and its value).
func parseRate(v string) (limiter.Limit, error) {
	l, err := limiter.ParseLimit(v)
	if err != nil {
		return l, errors.New(strings.TrimPrefix(err.Error(), fmt.Sprintf("limiter: invalid rate %q: ", v)))
	}
	return l, nil
}

func positiveInt(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive integer")
	}
	return n, nil
}

func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, errors.New("want a positive duration, e.g. 500ms, 5s, 1m")
	}
	return d, nil
}

func nonNegativeDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration, e.g. 0, 250ms, 1s")
	}
	return d, nil
}

// parseSize reads a byte count: "1048576", "512KiB", "4MiB" (also KB, MB, K,
// M; all binary multiples).
func parseSize(v string) (int64, error) {
	num, unit := v, int64(1)
	lower := strings.ToLower(v)
	for _, s := range []struct {
		suffix string
		unit   int64
	}{{"kib", 1 << 10}, {"kb", 1 << 10}, {"k", 1 << 10}, {"mib", 1 << 20}, {"mb", 1 << 20}, {"m", 1 << 20}} {
		if strings.HasSuffix(lower, s.suffix) {
			num, unit = strings.TrimSpace(v[:len(v)-len(s.suffix)]), s.unit
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/unit {
		return 0, errors.New("want a positive size in bytes, e.g. 1048576, 512KiB, 4MiB")
	}
	return n * unit, nil
}
