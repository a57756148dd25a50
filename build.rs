//! Links the system's libavif for AVIF encoding and decoding when the build machine
//! has it.
//!
//! libavif with libaom encodes a 12 MP photo in well under a second; rav1e (through
//! the image crate), the pure-Rust fallback, takes several. libavif is a system
//! library (`apt-get install libavif-dev`), so it is optional: without it, or with
//! `PROGIMAGE_NO_LIBAVIF` set, the build encodes with rav1e, refuses AVIF uploads
//! (415), and says so in a warning.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(libavif)");
    println!("cargo::rerun-if-env-changed=PROGIMAGE_NO_LIBAVIF");
    println!("cargo::rerun-if-changed=src/engine/avif.c");
    if std::env::var_os("PROGIMAGE_NO_LIBAVIF").is_some() {
        return;
    }
    match pkg_config::Config::new()
        .atleast_version("0.11")
        .probe("libavif")
    {
        Ok(library) => {
            let mut shim = cc::Build::new();
            shim.file("src/engine/avif.c");
            for include in &library.include_paths {
                shim.include(include);
            }
            for (name, value) in &library.defines {
                shim.define(name, value.as_deref());
            }
            shim.compile("progimage_avif");
            println!("cargo::rustc-cfg=libavif");
        }
        Err(err) => println!(
            "cargo::warning=libavif not found ({}); AVIF is encoded with rav1e, several times slower, and not read",
            err.to_string().lines().next().unwrap_or_default()
        ),
    }
}
