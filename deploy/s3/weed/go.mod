// SeaweedFS's `weed` at a pinned version, for the S3 artifact store's integration tests: built by
// ../install-seaweedfs.sh. A module of our own because `go install module@version` refuses a module
// whose go.mod has a replace directive, as SeaweedFS's does; its replace is repeated here.
module github.com/edgestream/edgestream/deploy/s3/weed

go 1.26.6

tool github.com/seaweedfs/seaweedfs/weed

require github.com/seaweedfs/seaweedfs v0.0.0-20261109003541-7506e5f91cd6

// SeaweedFS's own: tyler-smith/go-bip39 is gone from GitHub; cosmos/go-bip39 is its maintained fork.
replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0
