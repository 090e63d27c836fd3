//! Records the compiler and cargo that built kiln, for run environments: the machine that
//! runs a job (a compute node) often has neither.

use std::process::Command;

fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("cargo:rustc-env=KILN_RUSTC_VERSION={}", version(&rustc));
    println!("cargo:rustc-env=KILN_CARGO_VERSION={}", version(&cargo));
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-env-changed=CARGO");
}
