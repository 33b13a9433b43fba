//! Compiles our own protos (`proto/`) into Rust code included by `src/proto.rs`.
//!
//! To add a proto (e.g. the peer services), append it to `PROTOS` and, for services, turn on
//! `build_server` / `build_client`; every file shares the package `netsy`.

const PROTOS: &[&str] = &["proto/netsy/datafile.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
