// Package bench measures sluice's Redis primitives (admission, the bucket,
// the semaphore) beside their peers redis_rate and redislock, on the same
// Redis in the same run, and prints a README-ready table of the figures.
//
// The benchmarks use the Redis of $REDIS_URL when it is set, else the one
// internal/redistest provides (a container when Docker answers). The figures
// come from a redis-server started on loopback for the purpose:
//
//	redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no &
//	REDIS_URL=redis://127.0.0.1:6390 go test -run '^$' -bench . -benchtime 2s ./internal/bench/
//
// Nothing else may use that server during the run: the commands per
// operation are read from its server-wide INFO commandstats.
package bench
