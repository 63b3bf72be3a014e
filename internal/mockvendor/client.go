package mockvendor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultClientTimeout bounds each call of a Client whose Timeout is zero.
const DefaultClientTimeout = 5 * time.Second

// Client reads and resets a running Vendor's statistics over HTTP (GET
// /stats and POST /stats/reset) and starts and ends its outages (POST and
// DELETE /outage), the endpoints ServeHTTP defines. It is what the load
// tool and the end-to-end and container tests use; safe for concurrent use.
type Client struct {
	statsURL *url.URL
	http     *http.Client
	timeout  time.Duration
}

// NewClient returns a client of the statistics at statsURL, the vendor's
// /stats URL (e.g. "http://127.0.0.1:9090/stats"). hc nil means a client
// that uses no proxy from the environment (the vendor is local); timeout
// bounds each call, zero meaning DefaultClientTimeout.
func NewClient(statsURL string, hc *http.Client, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(statsURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("mockvendor: %q is not an http(s) statistics URL", statsURL)
	}
	u.RawQuery, u.Fragment = "", ""
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{Proxy: nil}}
	}
	if timeout <= 0 {
		timeout = DefaultClientTimeout
	}
	return &Client{statsURL: u, http: hc, timeout: timeout}, nil
}

// StatsQuery selects what Stats asks for.
type StatsQuery struct {
	// Window is W of Report.MaxInWindow; zero asks for the cheapest
	// maximum (simultaneous arrivals).
	Window time.Duration
	// Step, when positive, asks for Report.Series at this step, W being
	// Window.
	Step time.Duration
}

// Stats reads the statistics: GET /stats?window=W[&step=S].
func (c *Client) Stats(ctx context.Context, q StatsQuery) (*Report, error) {
	u := *c.statsURL
	v := url.Values{"window": {q.Window.String()}}
	if q.Step > 0 {
		v.Set("step", q.Step.String())
	}
	u.RawQuery = v.Encode()
	var rep Report
	err := c.do(ctx, http.MethodGet, u.String(), func(resp *http.Response) error {
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return json.NewDecoder(io.LimitReader(resp.Body, maxStatsBody)).Decode(&rep)
	})
	if err != nil {
		return nil, fmt.Errorf("mockvendor: vendor stats: %w", err)
	}
	return &rep, nil
}

// StatsWindow is Stats for the window w alone.
func (c *Client) StatsWindow(ctx context.Context, w time.Duration) (*Report, error) {
	return c.Stats(ctx, StatsQuery{Window: w})
}

// Reset starts a new statistics epoch at the vendor: POST /stats/reset.
func (c *Client) Reset(ctx context.Context) error {
	u := *c.statsURL
	u.Path = strings.TrimSuffix(u.Path, "/") + "/reset"
	err := c.do(ctx, http.MethodPost, u.String(), func(resp *http.Response) error {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		if resp.StatusCode/100 != 2 {
			return errors.New(resp.Status)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mockvendor: vendor reset: %w", err)
	}
	return nil
}

// StartOutage makes the vendor answer status (400-599) to every measured
// request from now on, for d (zero: until EndOutage): POST
// /outage?status=S&for=D.
func (c *Client) StartOutage(ctx context.Context, status int, d time.Duration) error {
	v := url.Values{"status": {strconv.Itoa(status)}}
	if d > 0 {
		v.Set("for", d.String())
	}
	if err := c.control(ctx, http.MethodPost, v); err != nil {
		return fmt.Errorf("mockvendor: start outage: %w", err)
	}
	return nil
}

// EndOutage ends the vendor's outage, started by hand or scheduled:
// DELETE /outage.
func (c *Client) EndOutage(ctx context.Context) error {
	if err := c.control(ctx, http.MethodDelete, nil); err != nil {
		return fmt.Errorf("mockvendor: end outage: %w", err)
	}
	return nil
}

// control sends a request to /outage, next to /stats, expecting a 2xx.
func (c *Client) control(ctx context.Context, method string, q url.Values) error {
	u := *c.statsURL
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/stats") + "/outage"
	u.RawQuery = q.Encode()
	return c.do(ctx, method, u.String(), func(resp *http.Response) error {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if resp.StatusCode/100 != 2 {
			var e apiError
			if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
				return fmt.Errorf("%s: %s", resp.Status, e.Error.Message)
			}
			return errors.New(resp.Status)
		}
		return nil
	})
}

// maxStatsBody bounds a /stats answer: a full Series is well below it.
const maxStatsBody = 8 << 20

func (c *Client) do(ctx context.Context, method, u string, read func(*http.Response) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := read(resp); err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	return nil
}
