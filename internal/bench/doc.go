// Package bench measures sluice's Redis primitives (admission, the bucket,
// the semaphore) beside their peers redis_rate and redislock, on the same
// Redis in the same run, and prints README-ready tables of the figures: per
// operation at 1, 16 and 64 goroutines, ops/s, p50/p99 latency and the cost
// to Redis (script calls, commands, script time, server CPU); and latency
// ratios at one goroutine from operations run alternately (BenchmarkPaired),
// which hold up on a machine shared with other work.
//
// The benchmarks use the Redis of $REDIS_URL when it is set, else the one
// internal/redistest provides (a container when Docker answers). The figures
// come from a redis-server started on loopback for the purpose:
//
//	redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no &
//	REDIS_URL=redis://127.0.0.1:6390 go test -run '^$' -bench . -benchtime 2s ./internal/bench/
//
// Nothing else may use that server during the run: the costs per operation
// are read from its server-wide INFO commandstats and cpu.
//
// BenchmarkScale measures the cost per admission as the replicas sharing a
// budget grow (C = 32, 480 waiters, 50 ms holds, 1 to 48 replicas), beside a
// polling peer (redislock keys polled every 5 ms), for a fixed time per row;
// run it alone, with -bench Scale -benchtime 1x (see its doc).
//
// TestCommandsPerAdmission (a test, run with the others) checks that waiting
// does not poll: Redis script calls per admitted call under contention.
package bench
