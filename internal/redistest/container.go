package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	dcontainer "github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
)

// defaultImage is the image used when $REDIS_IMAGE is unset.
const defaultImage = "redis:7-alpine"

var redisPort = network.MustParsePort("6379/tcp")

// setTestcontainersEnv sets the two settings testcontainers needs on these
// machines, unless the environment already has them: without the first it
// pulls its reaper image (no registry here), without the second it dials a
// guessed non-loopback gateway address and hangs.
func setTestcontainersEnv() {
	for k, v := range map[string]string{
		"TESTCONTAINERS_RYUK_DISABLED": "true",
		"TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1",
	} {
		if _, ok := os.LookupEnv(k); !ok {
			_ = os.Setenv(k, v)
		}
	}
}

var docker struct {
	once sync.Once
	err  error
}

// dockerAvailable reports, once per process, whether a Docker daemon answers.
func dockerAvailable(context.Context) error {
	docker.once.Do(func() {
		setTestcontainersEnv()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		docker.err = func() (err error) {
			defer func() { // testcontainers panics when it finds no Docker host
				if r := recover(); r != nil {
					err = fmt.Errorf("testcontainers: %v", r)
				}
			}()
			cli, err := dockerClient(ctx)
			if err != nil {
				return err
			}
			return cli.Close()
		}()
	})
	return docker.err
}

// dockerClient returns a client of the daemon testcontainers uses; it has
// already answered an Info request.
func dockerClient(ctx context.Context) (*testcontainers.DockerClient, error) {
	return testcontainers.NewDockerClientWithOpts(ctx)
}

// container is a Redis container on a fixed host port.
type container struct {
	ctr     *tcredis.RedisContainer
	address string
}

// startContainer runs $REDIS_IMAGE with no options that replace its CMD (the
// offline image's CMD holds --protected-mode no). The host port is chosen
// here rather than by Docker, so that it survives a restart.
func startContainer(ctx context.Context) (*container, error) {
	image := os.Getenv("REDIS_IMAGE")
	if image == "" {
		image = defaultImage
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		ctr, err := tcredis.Run(ctx, image,
			testcontainers.WithHostConfigModifier(func(hc *dcontainer.HostConfig) {
				hc.PortBindings = network.PortMap{redisPort: {{HostPort: strconv.Itoa(port)}}}
			}))
		if err != nil {
			if ctr != nil {
				_ = ctr.Terminate(context.WithoutCancel(ctx))
			}
			if attempt < 3 && isPortTaken(err) {
				continue // another process took the port meanwhile
			}
			hint := ""
			if os.Getenv("REDIS_IMAGE") == "" {
				hint = " (without a registry: build the offline image with .ci/images.sh and set REDIS_IMAGE=sluice-redis:local)"
			}
			return nil, fmt.Errorf("redistest: starting a %s container%s: %w", image, hint, err)
		}
		c := &container{ctr: ctr}
		if err := c.resolve(ctx); err != nil {
			_ = ctr.Terminate(context.WithoutCancel(ctx))
			return nil, err
		}
		return c, nil
	}
}

func isPortTaken(err error) bool {
	s := err.Error()
	return strings.Contains(s, "address already in use") || strings.Contains(s, "port is already allocated")
}

// resolve reads the container's host address and waits until it answers.
func (c *container) resolve(ctx context.Context) error {
	host, err := c.ctr.Host(ctx)
	if err != nil {
		return fmt.Errorf("redistest: container host: %w", err)
	}
	port, err := c.ctr.MappedPort(ctx, redisPort.String())
	if err != nil {
		return fmt.Errorf("redistest: container port: %w", err)
	}
	c.address = net.JoinHostPort(host, port.Port())
	if err := waitPing(ctx, c.address, nil); err != nil {
		return fmt.Errorf("redistest: container: %w", err)
	}
	return nil
}

func (c *container) addr() string { return c.address }

func (c *container) pause(ctx context.Context) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.ContainerPause(ctx, c.ctr.GetContainerID(), client.ContainerPauseOptions{})
	return err
}

func (c *container) unpause(ctx context.Context) error {
	cli, err := dockerClient(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.ContainerUnpause(ctx, c.ctr.GetContainerID(), client.ContainerUnpauseOptions{})
	return err
}

func (c *container) restart(ctx context.Context) error {
	timeout := 5 * time.Second
	if err := c.ctr.Stop(ctx, &timeout); err != nil {
		return err
	}
	if err := c.ctr.Start(ctx); err != nil {
		return err
	}
	return c.resolve(ctx)
}

func (c *container) terminate(ctx context.Context) error { return c.ctr.Terminate(ctx) }
