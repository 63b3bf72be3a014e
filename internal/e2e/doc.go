// Package e2e holds the end-to-end test of sluice as processes: the
// sluice binary is built once, then `sluice mockvendor` and three
// `sluice serve` replicas run as child processes on loopback, sharing one
// budget in a real Redis (internal/redistest). The test drives load with
// random client cancellations over the three replicas, SIGKILLs one of them
// midway, and checks the invariants I1-I6 (listed in the README) where they
// count: at the vendor (its /stats), and in Redis afterwards. The clients
// are internal/load's, the vendor is read with mockvendor.Client.
//
// The package has no API; it is only its test. Child processes die with the
// test binary (Linux), and are killed in t.Cleanup anyway.
package e2e
