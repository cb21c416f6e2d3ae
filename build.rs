//! Compiles the hand-written Envoy ext_authz subset in `proto/` with `protox` (no `protoc`
//! needed) and writes the descriptor set that the reflection service serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])?;
    std::fs::write(
        out_dir.join("certbound_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Envoy's header and context_extensions maps are small: a BTreeMap decodes and looks up
        // without hashing every key with SipHash.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
