// Package redistest starts real Redis servers for tests: a shared standalone
// server, dedicated servers for fault tests, and 3-master Redis Clusters.
//
// A package whose tests use [New] must run them through [Main]:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		rdb := redistest.New(t).Client(t)   // shared server, closed client on cleanup
//		budget := redistest.Budget(t)       // unique name: keys never collide
//		key := redisstate.For(budget).Bucket  // a budget's keys are named there
//		...
//	}
//
// # The API
//
//   - [Main] runs the tests and then stops the shared server.
//   - [New] returns the server shared by all tests of the test binary. Tests
//     keep to their own keys (see [Budget]) and may run in parallel.
//   - [NewIsolated] returns a server of its own for one test, stopped when the
//     test ends. Fault tests use it: [Server.Pause], [Server.Unpause] and
//     [Server.Restart] are refused on the shared server.
//   - [NewCluster] returns a 3-master Redis Cluster of its own for one test.
//   - [NewSentinel] returns a primary, a replica and three Sentinels of its
//     own for one test; [Sentinel.KillPrimary] and [Sentinel.WaitFailover]
//     drive a failover.
//   - [Budget] returns a unique budget name for the test (no braces, so it can
//     be a hash tag).
//   - [CommandStats], [ResetStats] and [KeysWithoutTTL] inspect a standalone
//     server or every master of a cluster.
//
// # Where the servers come from
//
// [New] and [NewIsolated] take the first that works:
//
//  1. Docker, when the daemon answers: a testcontainers redis container of
//     the image $REDIS_IMAGE (default redis:7-alpine). TESTCONTAINERS_RYUK_DISABLED
//     and TESTCONTAINERS_HOST_OVERRIDE are set to true and 127.0.0.1 when unset,
//     so a plain `go test` neither pulls the reaper nor hangs on a guessed
//     gateway address. Containers are labelled org.testcontainers=true.
//  2. $REDIS_URL, an existing server ([New] only: it cannot be isolated).
//  3. A redis-server on PATH, started as a child process on a free loopback
//     port without persistence.
//
// When none works the test is skipped, or fails if SLUICETEST_REQUIRE_DOCKER is
// set. With SLUICETEST_REQUIRE_DOCKER set (as in CI) only Docker is used for
// [New] and [NewIsolated], so nothing silently skips or runs elsewhere.
// [NewCluster] and [NewSentinel] always use processes (redis-server, and
// redis-sentinel for the latter); when one is missing they skip, or fail
// with SLUICETEST_REQUIRE_DOCKER set.
//
// A test binary that is killed (e.g. by -timeout) leaves its containers
// behind; .ci/run removes them. Child processes die with the binary (Linux).
package redistest
