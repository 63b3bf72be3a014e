// Package limiter holds sluice's rate limits: Bucket, a cluster-wide token
// bucket in Redis whose callers WAIT for their turn, served in the order they
// reserved across every replica; and KeyLimiter, a per-key limit that REJECTS
// at the edge (per user, per API key).
package limiter
