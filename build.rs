//! Compiles our own protos (`proto/`) into Rust code included by `src/proto.rs`.
//!
//! To add a proto, append it to `PROTOS`; every file shares the package `netsy`.

const PROTOS: &[&str] = &["proto/netsy/datafile.proto", "proto/netsy/peer.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
