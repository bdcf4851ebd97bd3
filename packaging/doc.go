// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// Package packaging holds the Debian package of baremetal_sd: its nfpm
// configuration (nfpm.yaml), maintainer scripts, default configuration and
// lintian overrides, built by build-deb.sh (`make package`). It has no Go
// code; its tests build the package, install it on the machine they run on
// and take it through upgrade, removal and purge, and check the cloud-init
// example that installs it.
package packaging
