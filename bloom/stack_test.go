package bloom_test

import (
	"testing"

	"github.com/sidecache/sidecache/internal/devstack"
)

// stack is the package's MariaDB and Redis, or nil when they could not start outside CI.
var stack *devstack.Stack

func TestMain(m *testing.M) { devstack.Main(m, devstack.Options{RedisOnly: true}, &stack) }
