// Package failover measures sluice across a Redis failover, the way Jepsen
// tests Redis: a primary, a replica and three Sentinels, gateway-like
// clients under load that open Redis as `sluice serve` does with
// SLUICE_REDIS_MODE=sentinel, and the primary SIGKILLed mid-run. What the
// vendor saw (calls in flight, calls in any window), how long admissions
// stopped, and what was left in Redis afterwards are logged and checked
// against the bounds the README promises. The package holds only tests.
package failover
