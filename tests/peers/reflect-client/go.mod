// reflect-client: a gRPC server-reflection client built on grpc-go (tests/reflection.rs runs it).
// Written for kforge, not generated: keep the grpc requirement at REFLECT_CLIENT_GRPC_VERSION in
// tests/peers/versions.env.
module kforge.invalid/peers/reflect-client

go 1.25.0

require (
	google.golang.org/grpc v1.84.0
	google.golang.org/protobuf v1.36.11
)

require (
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260706201446-f0a921348800 // indirect
)
