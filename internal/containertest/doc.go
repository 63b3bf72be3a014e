// Package containertest runs sluice as its users do, in containers, and
// checks the invariants I1-I6 (listed in the README) where they count: at the
// vendor.
//
// [Start] brings up, on a Docker network of its own: a Redis container
// (alias "redis"), a mock vendor (`sluice mockvendor`, alias "vendor") and
// several gateway replicas (`sluice serve`, aliases "gw1", "gw2", ...) all
// sharing one budget. The test drives load from the host (package load:
// [Stack.StartLoad] and [Stack.Send] configure it for the stack), disturbs
// the system (kill, SIGTERM, pause, restart Redis, SCRIPT FLUSH) and then
// reads what the vendor saw ([Stack.VendorStats], its /stats) and what Redis
// holds.
//
// # Images and environment
//
//   - SLUICE_IMAGE: the gateway image (default sluice:local, which
//     .ci/images.sh builds offline; `docker build -t sluice:local .` where a
//     registry is reachable).
//   - REDIS_IMAGE: the Redis image (default redis:7-alpine; offline
//     sluice-redis:local).
//   - TESTCONTAINERS_RYUK_DISABLED and TESTCONTAINERS_HOST_OVERRIDE are set to
//     true and 127.0.0.1 when unset; every container and the network are
//     removed in t.Cleanup.
//
// Without Docker or without the gateway image the tests are skipped, or
// fail when SLUICETEST_REQUIRE_DOCKER is set (as in CI). They are skipped with
// -short.
package containertest
