// Package packaging holds the Debian package of baremetal_sd: its nfpm
// configuration (nfpm.yaml), maintainer scripts, default configuration and
// lintian overrides, built by build-deb.sh (`make package`). It has no Go
// code; its tests build the package, install it on the machine they run on
// and take it through upgrade, removal and purge, and check the cloud-init
// example that installs it.
package packaging
