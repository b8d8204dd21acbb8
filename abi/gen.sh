#!/usr/bin/env bash
# Regenerates the Go code of abi's protocols (abi/*/*.proto: registrypb, transportpb, brokerpb) with
# protoc and the protoc-gen-go and protoc-gen-go-grpc versions pinned in tools/go.mod.
#
#   abi/gen.sh                                # every protocol
#   abi/gen.sh abi/registrypb/registry.proto  # only the ones named
#
# Needs protoc: apt-get install protobuf-compiler (its well-known types, such as
# google/protobuf/duration.proto, come with it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v protoc >/dev/null 2>&1; then
  echo "abi/gen.sh: protoc not found; install it with: apt-get install protobuf-compiler" >&2
  exit 1
fi

bin="$root/.cache/bin"
mkdir -p "$bin"
(cd tools && go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc)

protos=("$@")
if [ ${#protos[@]} -eq 0 ]; then
  protos=(abi/*/*.proto)
fi
for proto in "${protos[@]}"; do
  echo "protoc $proto"
  PATH="$bin:$PATH" protoc \
    --proto_path=. \
    --go_out=. --go_opt=module=github.com/microhost/micro \
    --go-grpc_out=. --go-grpc_opt=module=github.com/microhost/micro \
    "$proto"
done
