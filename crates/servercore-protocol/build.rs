//! Generates the protocol from the project's copy of the reference `.proto`
//! (pure Rust: protox + prost-build, no system `protoc`).

fn main() {
    if let Err(error) =
        servercore_codegen::Generator::new().compile(&["proto/protocol.proto"], &["proto"])
    {
        panic!("generating the protocol from proto/protocol.proto: {error}");
    }
}
