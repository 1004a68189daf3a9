//! Records which Cargo profile and optimisation level the binary was built with, so that
//! `tarn bench` can say whether its figures come from the fully optimised `release` profile.

fn main() {
    // OUT_DIR is `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`.
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = std::path::Path::new(&out)
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    let opt_level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=TARN_BUILD_PROFILE={profile}");
    println!("cargo:rustc-env=TARN_BUILD_OPT_LEVEL={opt_level}");
    println!("cargo:rerun-if-changed=build.rs");
}
