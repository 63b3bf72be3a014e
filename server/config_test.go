package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/limiter"
)

func load(env map[string]string) (Config, error) {
	return LoadConfig(func(name string) (string, bool) { v, ok := env[name]; return v, ok })
}

func TestConfigDefaults(t *testing.T) {
	c, err := load(map[string]string{"SLUICE_UPSTREAM_URL": "https://api.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: ":8080", RedisMode: "standalone", UpstreamURL: c.UpstreamURL, Budget: "default",
		Rate:        limiter.Limit{Rate: 60, Burst: 1, Period: time.Minute},
		Concurrency: 3, QueueTimeout: 5 * time.Second, CallTimeout: 30 * time.Second, RequestTimeout: 60 * time.Second,
		MaxAttempts: 3, LeaseTTL: 15 * time.Second, CancelGrace: 250 * time.Millisecond, MaxBody: 4 << 20,
		BackoffBase: 250 * time.Millisecond, BackoffMax: 10 * time.Second, ConnectTimeout: 5 * time.Second,
		ShutdownTimeout: 30 * time.Second, LogLevel: slog.LevelInfo,
		MaxConns: 512, IdleTimeout: 30 * time.Second, WriteTimeout: 10 * time.Second,
		MaxRequests: 512, MaxBuffered: 256 << 20, ClientMaxRequests: 64, ClientMaxBuffered: 32 << 20,
	}
	if fmt.Sprintf("%#v", c) != fmt.Sprintf("%#v", want) {
		t.Errorf("defaults\n got %#v\nwant %#v", c, want)
	}
	if c.UpstreamURL.String() != "https://api.example.com" {
		t.Errorf("upstream %s", c.UpstreamURL)
	}
	for _, v := range Variables() {
		if v.Usage == "" || !strings.HasPrefix(v.Name, "SLUICE_") {
			t.Errorf("%+v", v)
		}
	}
}

func TestConfigValues(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("# clients\nalpha\n\n  beta  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, value string
		check       func(Config) bool
	}{
		{"SLUICE_LISTEN", "127.0.0.1:9", func(c Config) bool { return c.Listen == "127.0.0.1:9" }},
		{"SLUICE_REDIS_URL", "rediss://u:p@h:6380/2", func(c Config) bool { return c.RedisURL == "rediss://u:p@h:6380/2" }},
		{"SLUICE_REDIS_MODE", "cluster", func(c Config) bool { return c.RedisMode == "cluster" }},
		{"SLUICE_UPSTREAM_URL", "http://vendor:9000/prefix/", func(c Config) bool { return c.UpstreamURL.String() == "http://vendor:9000/prefix" }},
		{"SLUICE_UPSTREAM_API_KEY", "sk-1", func(c Config) bool { return c.UpstreamAPIKey == "sk-1" }},
		{"SLUICE_BUDGET", "team-a", func(c Config) bool { return c.Budget == "team-a" }},
		{"SLUICE_RATE", "10/s", func(c Config) bool { return c.Rate == limiter.Limit{Rate: 10, Burst: 1, Period: time.Second} }},
		{"SLUICE_BURST", "5", func(c Config) bool { return c.Rate.Burst == 5 && c.Rate.Rate == 60 }},
		{"SLUICE_CONCURRENCY", "12", func(c Config) bool { return c.Concurrency == 12 }},
		{"SLUICE_QUEUE_TIMEOUT", "250ms", func(c Config) bool { return c.QueueTimeout == 250*time.Millisecond }},
		{"SLUICE_CALL_TIMEOUT", "1m", func(c Config) bool { return c.CallTimeout == time.Minute }},
		{"SLUICE_REQUEST_TIMEOUT", "90s", func(c Config) bool { return c.RequestTimeout == 90*time.Second }},
		{"SLUICE_MAX_ATTEMPTS", "1", func(c Config) bool { return c.MaxAttempts == 1 }},
		{"SLUICE_LEASE_TTL", "5s", func(c Config) bool { return c.LeaseTTL == 5*time.Second }},
		{"SLUICE_CANCEL_GRACE", "1s", func(c Config) bool { return c.CancelGrace == time.Second }},
		{"SLUICE_CANCEL_GRACE", "0", func(c Config) bool { return c.CancelGrace == 0 }},
		{"SLUICE_USER_RATE", "20/m", func(c Config) bool { return c.UserRate == limiter.Limit{Rate: 20, Burst: 20, Period: time.Minute} }},
		{"SLUICE_USER_RATE", "off", func(c Config) bool { return c.UserRate.IsZero() }},
		{"SLUICE_API_KEYS", " a, b ,,c", func(c Config) bool {
			return fmt.Sprint(c.APIKeys) == "[REDACTED REDACTED REDACTED]" && c.APIKeys[1] == "b"
		}},
		{"SLUICE_API_KEYS", "@" + keyFile, func(c Config) bool { return len(c.APIKeys) == 2 && c.APIKeys[0] == "alpha" && c.APIKeys[1] == "beta" }},
		{"SLUICE_MAX_BODY", "512KiB", func(c Config) bool { return c.MaxBody == 512<<10 }},
		{"SLUICE_MAX_BODY", "2mb", func(c Config) bool { return c.MaxBody == 2<<20 }},
		{"SLUICE_MAX_BODY", "1000", func(c Config) bool { return c.MaxBody == 1000 }},
		{"SLUICE_BACKOFF_BASE", "10ms", func(c Config) bool { return c.BackoffBase == 10*time.Millisecond }},
		{"SLUICE_BACKOFF_MAX", "1s", func(c Config) bool { return c.BackoffMax == time.Second }},
		{"SLUICE_CONNECT_TIMEOUT", "2s", func(c Config) bool { return c.ConnectTimeout == 2*time.Second }},
		{"SLUICE_TRUST_PROXY", "true", func(c Config) bool { return len(c.TrustedProxies) == len(privateNetworks) }},
		{"SLUICE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7,2001:db8::/32", func(c Config) bool {
			return fmt.Sprint(c.TrustedProxies) == "[10.0.0.0/8 192.0.2.7/32 2001:db8::/32]"
		}},
		{"SLUICE_OPS_LISTEN", "127.0.0.1:9090", func(c Config) bool { return c.OpsListen == "127.0.0.1:9090" }},
		{"SLUICE_ALLOW_NO_AUTH", "true", func(c Config) bool { return c.AllowNoAuth }},
		{"SLUICE_MAX_CONNS", "100", func(c Config) bool { return c.MaxConns == 100 }},
		{"SLUICE_IDLE_TIMEOUT", "5s", func(c Config) bool { return c.IdleTimeout == 5*time.Second }},
		{"SLUICE_WRITE_TIMEOUT", "3s", func(c Config) bool { return c.WriteTimeout == 3*time.Second }},
		{"SLUICE_MAX_REQUESTS", "10", func(c Config) bool { return c.MaxRequests == 10 }},
		{"SLUICE_CLIENT_MAX_REQUESTS", "2", func(c Config) bool { return c.ClientMaxRequests == 2 }},
		{"SLUICE_MAX_BUFFERED", "64MiB", func(c Config) bool { return c.MaxBuffered == 64<<20 }},
		{"SLUICE_CLIENT_MAX_BUFFERED", "8MiB", func(c Config) bool { return c.ClientMaxBuffered == 8<<20 }},
		{"SLUICE_SHUTDOWN_TIMEOUT", "3s", func(c Config) bool { return c.ShutdownTimeout == 3*time.Second }},
		{"SLUICE_LOG_LEVEL", "debug", func(c Config) bool { return c.LogLevel == slog.LevelDebug }},
	} {
		env := map[string]string{"SLUICE_UPSTREAM_URL": "http://v", c.name: c.value}
		cfg, err := load(env)
		if err != nil || !c.check(cfg) {
			t.Errorf("%s=%q: %v %+v", c.name, c.value, err, cfg)
		}
	}
	cfg, err := load(map[string]string{"SLUICE_UPSTREAM_URL": "http://v", "SLUICE_USER_RATE": "20/m", "SLUICE_USER_BURST": "3"})
	if err != nil || cfg.UserRate.Burst != 3 {
		t.Errorf("user burst: %v %+v", err, cfg.UserRate)
	}
}

// TestConfigErrors: each bad value fails with one line that names its
// variable and never quotes a key.
func TestConfigErrors(t *testing.T) {
	for _, c := range []struct{ name, value string }{
		{"SLUICE_REDIS_MODE", "ring"},
		{"SLUICE_UPSTREAM_URL", "ftp://x"},
		{"SLUICE_UPSTREAM_URL", "vendor:9000"},
		{"SLUICE_UPSTREAM_URL", "http://"},
		{"SLUICE_UPSTREAM_URL", "https://api.openai.com/v1"},
		{"SLUICE_UPSTREAM_URL", "https://user:sk-secret@api.openai.com"},
		{"SLUICE_UPSTREAM_URL", "https://api.openai.com?api_key=sk-secret"},
		{"SLUICE_UPSTREAM_URL", "sk-secret"},
		{"SLUICE_TRUSTED_PROXIES", "10.0.0.0/8,nope"},
		{"SLUICE_ALLOW_NO_AUTH", "perhaps"},
		{"SLUICE_MAX_CONNS", "0"},
		{"SLUICE_IDLE_TIMEOUT", "0s"},
		{"SLUICE_WRITE_TIMEOUT", "x"},
		{"SLUICE_MAX_REQUESTS", "-3"},
		{"SLUICE_CLIENT_MAX_BUFFERED", "1KiB"}, // below SLUICE_MAX_BODY
		{"SLUICE_RATE", "fast"},
		{"SLUICE_RATE", "0/s"},
		{"SLUICE_RATE", "10/fortnight"},
		{"SLUICE_BURST", "0"},
		{"SLUICE_BURST", "many"},
		{"SLUICE_CONCURRENCY", "-1"},
		{"SLUICE_QUEUE_TIMEOUT", "5"},
		{"SLUICE_CALL_TIMEOUT", "-1s"},
		{"SLUICE_REQUEST_TIMEOUT", "soon"},
		{"SLUICE_MAX_ATTEMPTS", "0"},
		{"SLUICE_LEASE_TTL", "0s"},
		{"SLUICE_LEASE_TTL", "400ms"}, // renewals could not keep it
		{"SLUICE_CANCEL_GRACE", "-1ms"},
		{"SLUICE_CANCEL_GRACE", "brief"},
		{"SLUICE_USER_RATE", "lots"},
		{"SLUICE_USER_BURST", "5"}, // without SLUICE_USER_RATE
		{"SLUICE_API_KEYS", " , "},
		{"SLUICE_API_KEYS", "@/nonexistent/keys"},
		{"SLUICE_MAX_BODY", "huge"},
		{"SLUICE_MAX_BODY", "0"},
		{"SLUICE_MAX_BODY", "9999999MiB"},
		{"SLUICE_BACKOFF_BASE", "x"},
		{"SLUICE_BACKOFF_MAX", "1ms"}, // below the base
		{"SLUICE_CONNECT_TIMEOUT", "0"},
		{"SLUICE_TRUST_PROXY", "maybe"},
		{"SLUICE_SHUTDOWN_TIMEOUT", "x"},
		{"SLUICE_LOG_LEVEL", "loud"},
	} {
		env := map[string]string{"SLUICE_UPSTREAM_URL": "http://v", c.name: c.value}
		_, err := load(env)
		if err == nil || !strings.Contains(err.Error(), c.name) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s=%q: %v", c.name, c.value, err)
		}
	}
	if _, err := load(map[string]string{}); err == nil || !strings.Contains(err.Error(), "SLUICE_UPSTREAM_URL") {
		t.Errorf("upstream unset: %v", err)
	}
	if _, err := load(map[string]string{"SLUICE_UPSTREAM_URL": "http://v", "SLUICE_RATE": "fast"}); err == nil ||
		err.Error() != `invalid SLUICE_RATE="fast": want RATE/PERIOD, e.g. "60/m", "10/s", "1000/h" or "5/250ms"` {
		t.Errorf("message: %v", err)
	}
}

func TestSecretNeverFormatted(t *testing.T) {
	c, err := load(map[string]string{"SLUICE_UPSTREAM_URL": "http://v", "SLUICE_UPSTREAM_API_KEY": "sk-live-123", "SLUICE_API_KEYS": "client-456"})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	slog.New(slog.NewJSONHandler(&sb, nil)).Info("cfg", "key", c.UpstreamAPIKey, "keys", c.APIKeys)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), sb.String()} {
		if strings.Contains(s, "sk-live-123") || strings.Contains(s, "client-456") {
			t.Errorf("secret formatted: %s", s)
		}
	}
}

// A bad rate is named once: the variable and its value, then what is wrong,
// without the parser repeating them.
func TestConfigRateErrorSaysItOnce(t *testing.T) {
	for _, name := range []string{"SLUICE_RATE", "SLUICE_USER_RATE"} {
		_, err := LoadConfig(func(v string) (string, bool) {
			switch v {
			case "SLUICE_UPSTREAM_URL":
				return "http://vendor.invalid", true
			case name:
				return "fast", true
			}
			return "", false
		})
		if err == nil || strings.Count(err.Error(), "fast") != 1 || !strings.Contains(err.Error(), name) ||
			!strings.Contains(err.Error(), "want RATE/PERIOD") {
			t.Errorf("%s=fast: %v", name, err)
		}
	}
}
