//! Backend selection by cargo feature and by name.
//!
//! Ember's crates are generic over `burn::tensor::backend::Backend`; binaries and examples
//! pick a concrete one. The workspace features `flex` (default, pure-Rust CPU), `ndarray`,
//! `wgpu` and `cuda` compile the corresponding burn backends in.

/// The default CPU backend: burn's pure-Rust `Flex` when the `flex` feature is on,
/// otherwise `NdArray`.
#[cfg(feature = "flex")]
pub type DefaultBackend = burn::backend::Flex;
/// The default CPU backend: burn's pure-Rust `Flex` when the `flex` feature is on,
/// otherwise `NdArray`.
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type DefaultBackend = burn::backend::NdArray;

/// The names of the backends compiled into this build, for `--device` flags.
pub fn available_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Checks that `name` is a backend compiled into this build, with an error listing those
/// that are.
pub fn check_backend(name: &str) -> crate::Result<()> {
    let valid = available_backends();
    if valid.contains(&name) {
        Ok(())
    } else {
        Err(crate::Error::unknown("device", name, &valid))
    }
}
