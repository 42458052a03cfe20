//! Links the system libopus used by `src/opus.rs`.
//!
//! Asks `pkg-config` for the library's search path and link flags when it is available
//! (the Debian package is `libopus-dev`); otherwise links `-lopus` from the default
//! library path.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let from_pkg_config = Command::new("pkg-config")
        .args(["--libs", "opus"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok());

    let mut linked = false;
    if let Some(flags) = from_pkg_config {
        for flag in flags.split_whitespace() {
            if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            } else if let Some(lib) = flag.strip_prefix("-l") {
                println!("cargo:rustc-link-lib={lib}");
                linked |= lib == "opus";
            }
        }
    }
    if !linked {
        println!("cargo:rustc-link-lib=opus");
    }
}
