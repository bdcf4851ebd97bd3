package memory

import (
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/storetest"
)

func TestStore_Conformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) store.Store { return New() }, nil)
}
